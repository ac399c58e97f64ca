{{/*
The built-in Linux job template: a batch/v1 Job the reconciler completes at run time (name,
namespace, labels, AZP_* environment and the registration token volume). In `split` mode the
init container registers the agent with the token and hands its state to the main container
through the agent-state emptyDir, so the container running pipeline steps never sees the PAT.
Container builds (all opt-in): agent.buildkit adds a rootless BuildKit sidecar the steps reach at
$BUILDKIT_HOST; agent.dockerSocket mounts the node's socket with its group; agent.privileged runs the
agent container as root (AGENT_ALLOW_RUNASROOT) and privileged, for images that bring their own daemon.
*/}}
{{- define "azp-agents.agentContainerSecurityContext" -}}
{{- if .Values.agent.privileged -}}
privileged: true
allowPrivilegeEscalation: true
# The agent's config.sh and run.sh refuse root unless AGENT_ALLOW_RUNASROOT is set (see env).
runAsUser: 0
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

{{/*
The rootless BuildKit sidecar (a native sidecar: an init container with restartPolicy Always, so the
Job completes when the agent exits). Its security settings are what moby/buildkit's
examples/kubernetes/*.rootless.yaml and docs/rootless.md require: uid 1000 (the image's user, mapped
to root inside builds through /etc/subuid), seccomp and AppArmor Unconfined (unshare and mount), and
--oci-worker-no-process-sandbox because Kubernetes has no equivalent of systempaths=unconfined. It keeps
the capabilities and privilege escalation newuidmap/newgidmap (setuid) need to map the sub-ids.
buildkitd pulls base images itself: behind proxy.url it gets the reconciler's HTTPS_PROXY/NO_PROXY, and
with caBundle SSL_CERT_FILE (Go reads both), the bundle being mounted in every container of the pod.
*/}}
{{/* Where buildkitd listens and BUILDKIT_HOST points: the pod's loopback, so no other pod reaches it. */}}
{{- define "azp-agents.buildkitAddress" -}}
{{- printf "tcp://127.0.0.1:%d" (int .Values.agent.buildkit.port) -}}
{{- end -}}

{{- define "azp-agents.buildkitSidecar" -}}
{{- $buildkit := .Values.agent.buildkit -}}
{{- $address := include "azp-agents.buildkitAddress" . -}}
name: buildkitd
image: {{ include "azp-agents.image" (dict "image" $buildkit.image "defaultTag" $buildkit.image.tag) }}
imagePullPolicy: {{ $buildkit.image.pullPolicy }}
restartPolicy: Always
{{- with include "azp-agents.reconcilerNetworkEnv" . | fromJsonArray }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
args:
  - --addr
  - {{ $address }}
  - --oci-worker-no-process-sandbox
startupProbe:
  exec:
    command: [buildctl, --addr, {{ $address }}, debug, workers]
  periodSeconds: 2
  failureThreshold: 60
securityContext:
  runAsUser: 1000
  runAsGroup: 1000
  runAsNonRoot: true
  seccompProfile:
    type: Unconfined
  appArmorProfile:
    type: Unconfined
resources:
  {{- toYaml $buildkit.resources | nindent 2 }}
volumeMounts:
  - name: buildkit-state
    mountPath: /home/user/.local/share/buildkit
{{- end -}}

{{/* Environment of the agent container: agent.extraEnv plus what the container-build options need. */}}
{{- define "azp-agents.agentEnv" -}}
{{- $agent := .Values.agent -}}
{{- $env := list -}}
{{- if $agent.buildkit.enabled -}}
{{- $env = append $env (dict "name" "BUILDKIT_HOST" "value" (include "azp-agents.buildkitAddress" .)) -}}
{{- end -}}
{{- if $agent.privileged -}}
{{- $env = append $env (dict "name" "AGENT_ALLOW_RUNASROOT" "value" "1") -}}
{{- end -}}
{{- concat $agent.extraEnv $env | toJson -}}
{{- end -}}

{{- define "azp-agents.defaultJobTemplate" -}}
{{- $agent := .Values.agent -}}
{{- $agentEnv := include "azp-agents.agentEnv" . | fromJsonArray -}}
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
        {{- if $agent.dockerSocket.enabled }}
        # The socket is root:<docker group> 0660 on the node: the agent user needs that group.
        supplementalGroups: [{{ int64 $agent.dockerSocket.groupId }}]
        {{- end }}
        seccompProfile:
          type: RuntimeDefault
      {{- if or (eq $agent.mode "split") $agent.buildkit.enabled }}
      initContainers:
        {{- if eq $agent.mode "split" }}
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
        {{- if $agent.buildkit.enabled }}
        - {{- include "azp-agents.buildkitSidecar" . | nindent 10 }}
        {{- end }}
      {{- end }}
      containers:
        - name: agent
          image: {{ $image }}
          imagePullPolicy: {{ $agent.image.pullPolicy }}
          args: [{{ ternary "run" "once" (eq $agent.mode "split") }}]
          {{- with $agentEnv }}
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
        {{- if $agent.buildkit.enabled }}
        # BuildKit's cache and layers: the image declares this VOLUME, and rootless BuildKit needs it to
        # be a real volume (moby/buildkit docs/rootless.md, "Container-Optimized OS" and `rbind ro`).
        - name: buildkit-state
          {{- if $agent.buildkit.stateSizeLimit }}
          emptyDir:
            sizeLimit: {{ $agent.buildkit.stateSizeLimit }}
          {{- else }}
          emptyDir: {}
          {{- end }}
        {{- end }}
{{- end -}}
