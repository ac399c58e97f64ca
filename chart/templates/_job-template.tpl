{{/*
The built-in Linux job template: a batch/v1 Job the reconciler completes at run time (name,
namespace, labels, AZP_* environment and the registration token volume). In `split` mode the
init container registers the agent with the token and hands its state to the main container
through the agent-state emptyDir, so the container running pipeline steps never sees the PAT.
*/}}
{{- define "azp-agents.agentContainerSecurityContext" -}}
{{- if .Values.agent.privileged -}}
privileged: true
allowPrivilegeEscalation: true
runAsNonRoot: false
seccompProfile:
  type: RuntimeDefault
{{- else -}}
allowPrivilegeEscalation: false
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- end -}}

{{- define "azp-agents.defaultJobTemplate" -}}
{{- $agent := .Values.agent -}}
{{- $image := include "azp-agents.image" (dict "image" $agent.image "defaultTag" .Values.reconciler.agentVersion) -}}
{{- $cachePaths := include "azp-agents.cachePaths" . | fromJson -}}
{{- $caches := list -}}
{{- range $name := list "tasks" "tool" "npm" "nuget" "maven" -}}
{{- if (index $.Values.caches $name).enabled -}}
{{- $caches = append $caches $name -}}
{{- end -}}
{{- end -}}
apiVersion: batch/v1
kind: Job
metadata:
  annotations:
    azp-agents.dev/job-template: built-in-linux
spec:
  backoffLimit: 0
  template:
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      restartPolicy: Never
      terminationGracePeriodSeconds: {{ int $agent.terminationGracePeriodSeconds }}
      {{- if gt (int $agent.activeDeadlineSeconds) 0 }}
      activeDeadlineSeconds: {{ int $agent.activeDeadlineSeconds }}
      {{- end }}
      securityContext:
        runAsNonRoot: {{ not $agent.privileged }}
        runAsUser: 10001
        runAsGroup: 10001
        fsGroup: 10001
        fsGroupChangePolicy: OnRootMismatch
        seccompProfile:
          type: RuntimeDefault
      {{- if eq $agent.mode "split" }}
      initContainers:
        - name: register
          image: {{ $image }}
          imagePullPolicy: {{ $agent.image.pullPolicy }}
          args: [register]
          {{- with $agent.extraEnv }}
          env:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            allowPrivilegeEscalation: false
            runAsNonRoot: true
            capabilities:
              drop:
                - ALL
            seccompProfile:
              type: RuntimeDefault
          resources:
            {{- toYaml $agent.registerResources | nindent 12 }}
          volumeMounts:
            - name: agent-state
              mountPath: /azp/state
      {{- end }}
      containers:
        - name: agent
          image: {{ $image }}
          imagePullPolicy: {{ $agent.image.pullPolicy }}
          args: [{{ ternary "run" "once" (eq $agent.mode "split") }}]
          {{- with $agent.extraEnv }}
          env:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- include "azp-agents.agentContainerSecurityContext" . | nindent 12 }}
          resources:
            {{- toYaml $agent.resources | nindent 12 }}
          volumeMounts:
            - name: agent-state
              mountPath: /azp/state
            - name: work
              mountPath: /azp/_work
            {{- range $name := $caches }}
            - name: cache-{{ $name }}
              mountPath: {{ index $cachePaths $name }}
            {{- end }}
            {{- if $agent.dockerSocket.enabled }}
            - name: docker-socket
              mountPath: /var/run/docker.sock
            {{- end }}
      volumes:
        # The agent's identity, private key included: in memory, never on the node's disk.
        - name: agent-state
          emptyDir:
            medium: Memory
            sizeLimit: 16Mi
        - name: work
          {{- if $agent.workSizeLimit }}
          emptyDir:
            sizeLimit: {{ $agent.workSizeLimit }}
          {{- else }}
          emptyDir: {}
          {{- end }}
        {{- range $name := $caches }}
        - name: cache-{{ $name }}
          persistentVolumeClaim:
            claimName: {{ include "azp-agents.cacheClaimName" (dict "root" $ "name" $name) }}
        {{- end }}
        {{- if $agent.dockerSocket.enabled }}
        - name: docker-socket
          hostPath:
            path: {{ $agent.dockerSocket.path }}
            type: Socket
        {{- end }}
{{- end -}}
