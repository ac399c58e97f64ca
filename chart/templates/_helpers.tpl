{{/*
Names, labels, images and the cross-field checks of the chart. Every object name and label set
comes from here, so two templates can never disagree on them.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "azp-agents.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: the release name, plus the chart name unless the release already holds it. */}}
{{- define "azp-agents.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart-version, as the helm.sh/chart label wants it. */}}
{{- define "azp-agents.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release as the reconciler records it in agent labels (the config schema allows no dots). */}}
{{- define "azp-agents.release" -}}
{{- .Release.Name | replace "." "-" | trunc 53 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select this release's objects of this chart. */}}
{{- define "azp-agents.selectorLabels" -}}
app.kubernetes.io/name: {{ include "azp-agents.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object the chart renders (agent Jobs get theirs from the reconciler). */}}
{{- define "azp-agents.labels" -}}
helm.sh/chart: {{ include "azp-agents.chart" . }}
{{ include "azp-agents.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: azp-agents
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* An image reference from {repository, tag, digest}; an empty tag means .defaultTag. */}}
{{- define "azp-agents.image" -}}
{{- $image := .image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .defaultTag $image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "azp-agents.reconcilerName" -}}
{{- printf "%s-reconciler" (include "azp-agents.fullname" .) -}}
{{- end -}}

{{- define "azp-agents.agentServiceAccountName" -}}
{{- printf "%s-agent" (include "azp-agents.fullname" .) -}}
{{- end -}}

{{- define "azp-agents.configMapName" -}}
{{- printf "%s-config" (include "azp-agents.fullname" .) -}}
{{- end -}}

{{/* Entra ID settings the schema cannot check: what each auth.method needs. */}}
{{- define "azp-agents.checkEntraAuth" -}}
{{- $auth := .Values.auth -}}
{{- if and (eq $auth.method "workloadIdentity") (not $auth.clientId) -}}
{{- fail "auth.clientId is required with auth.method=workloadIdentity: the application (client) ID of the managed identity or app registration whose federated credential trusts the reconciler's ServiceAccount" -}}
{{- end -}}
{{- if eq $auth.method "servicePrincipal" -}}
{{- range $key := list "tenantId" "clientId" -}}
{{- if not (get $auth $key) -}}
{{- fail (printf "auth.%s is required with auth.method=servicePrincipal: the app registration's %s" $key (ternary "directory (tenant) ID" "application (client) ID" (eq $key "tenantId"))) -}}
{{- end -}}
{{- end -}}
{{- if not $auth.servicePrincipal.existingSecret -}}
{{- fail "auth.servicePrincipal.existingSecret is required with auth.method=servicePrincipal: create a Secret in the release namespace with the client secret (key auth.servicePrincipal.clientSecretKey) or a PEM certificate and key (set auth.servicePrincipal.certificateKey)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The reconciler pods' labels: reconciler.podLabels, and the AKS workload identity webhook's opt-in. */}}
{{- define "azp-agents.reconcilerPodLabels" -}}
{{- $labels := deepCopy .Values.reconciler.podLabels -}}
{{- if eq .Values.auth.method "workloadIdentity" -}}
{{- $_ := set $labels "azure.workload.identity/use" "true" -}}
{{- end -}}
{{- toYaml $labels -}}
{{- end -}}

{{/* The Secret holding the PAT: the user's existing one, or the chart's. */}}
{{- define "azp-agents.secretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else -}}
{{- printf "%s-pat" (include "azp-agents.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
How agents are registered (agent.registration): as set, else reconciler unless the reconciler holds a PAT
(auth.method pat, the default): reconciler/config.py agent_registration says the same.
*/}}
{{- define "azp-agents.agentRegistration" -}}
{{- $method := default "pat" (get .Values.auth "method") -}}
{{- default (ternary "token" "reconciler" (eq $method "pat")) .Values.agent.registration -}}
{{- end -}}

{{- define "azp-agents.secretKey" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecretKey -}}
{{- else -}}
pat
{{- end -}}
{{- end -}}

{{/* The default agent namespace: agent.namespace, else the release namespace. */}}
{{- define "azp-agents.agentNamespace" -}}
{{- default .Release.Namespace .Values.agent.namespace -}}
{{- end -}}

{{/* Every namespace agent Jobs run in, as a sorted JSON list without duplicates. */}}
{{- define "azp-agents.agentNamespaces" -}}
{{- if include "azp-agents.aci" . -}}
{{- list | toJson -}}
{{- else -}}
{{- $namespaces := list (include "azp-agents.agentNamespace" .) -}}
{{- range .Values.pools -}}
{{- if .namespace -}}
{{- $namespaces = append $namespaces .namespace -}}
{{- end -}}
{{- end -}}
{{- $namespaces | uniq | sortAlpha | toJson -}}
{{- end -}}
{{- end -}}

{{/* Cache name -> mount path in agent pods; the order is the order of the volumes. */}}
{{- define "azp-agents.cachePaths" -}}
{{- dict "tasks" "/azp/_work/_tasks" "tool" "/azp/_work/_tool" "npm" "/home/agent/.npm" "nuget" "/home/agent/.nuget/packages" "maven" "/home/agent/.m2/repository" | toJson -}}
{{- end -}}

{{- define "azp-agents.cacheClaimName" -}}
{{- $cache := index .root.Values.caches .name -}}
{{- default (printf "%s-cache-%s" (include "azp-agents.fullname" .root) .name) $cache.existingClaim -}}
{{- end -}}

{{/*
The sorted set of values a cron field matches, as a JSON list: .field is the field text, .size the
number of values it ranges over (60 minutes, 24 hours), .key the value key for error messages.
*/}}
{{- define "azp-agents.cronSet" -}}
{{- $size := int .size -}}
{{- $matched := dict -}}
{{- range $part := splitList "," .field -}}
{{- $span := $part -}}
{{- $step := 1 -}}
{{- if contains "/" $part -}}
{{- $span = first (splitList "/" $part) -}}
{{- $step = atoi (last (splitList "/" $part)) -}}
{{- end -}}
{{- $low := 0 -}}
{{- $high := sub $size 1 | int -}}
{{- if contains "-" $span -}}
{{- $low = atoi (first (splitList "-" $span)) -}}
{{- $high = atoi (last (splitList "-" $span)) -}}
{{- else if ne $span "*" -}}
{{- $low = atoi $span -}}
{{- if not (contains "/" $part) -}}
{{- $high = $low -}}
{{- end -}}
{{- end -}}
{{- if or (ge $low $size) (ge $high $size) (gt $low $high) (lt $step 1) -}}
{{- fail (printf "%s: %q is out of range in the cron field %q (values 0-%d): fix the schedule" $.key $part $.field (sub $size 1)) -}}
{{- end -}}
{{- range $value := untilStep $low (add $high 1 | int) $step -}}
{{- $_ := set $matched (toString $value) true -}}
{{- end -}}
{{- end -}}
{{- $values := list -}}
{{- range $value := until $size -}}
{{- if hasKey $matched (toString $value) -}}
{{- $values = append $values $value -}}
{{- end -}}
{{- end -}}
{{- toJson $values -}}
{{- end -}}

{{/* The smallest gap between two members of a cyclic set (JSON list .set, cycle length .size). */}}
{{- define "azp-agents.cyclicGap" -}}
{{- $set := .set -}}
{{- $gap := int .size -}}
{{- $previous := -1 -}}
{{- range $value := $set -}}
{{- $value = int $value -}}
{{- if ge $previous 0 -}}
{{- $gap = min $gap (sub $value $previous) | int -}}
{{- end -}}
{{- $previous = $value -}}
{{- end -}}
{{- if gt (len $set) 1 -}}
{{- $gap = min $gap (sub (add .size (int (first $set))) $previous) | int -}}
{{- end -}}
{{- $gap -}}
{{- end -}}

{{/*
The shortest time in seconds between two runs of reconciler.schedule. Day fields only make runs
rarer, so minutes and hours decide; the answer errs short, which keeps the run deadline safe.
*/}}
{{- define "azp-agents.schedulePeriod" -}}
{{- include "azp-agents.checkSchedule" . -}}
{{- $schedule := trim .Values.reconciler.schedule -}}
{{- $macros := dict "@hourly" 3600 "@daily" 86400 "@midnight" 86400 "@weekly" 604800 "@monthly" 2419200 "@yearly" 31536000 "@annually" 31536000 -}}
{{- if hasKey $macros $schedule -}}
{{- index $macros $schedule -}}
{{- else -}}
{{- $fields := regexSplit "\\s+" $schedule -1 -}}
{{- if ne (len $fields) 5 -}}
{{- fail (printf "reconciler.schedule: %q is not a cron schedule: give 5 fields (minute hour day month weekday) or @hourly/@daily" $schedule) -}}
{{- end -}}
{{- $minutes := include "azp-agents.cronSet" (dict "field" (index $fields 0) "size" 60 "key" "reconciler.schedule") | fromJsonArray -}}
{{- $hours := include "azp-agents.cronSet" (dict "field" (index $fields 1) "size" 24 "key" "reconciler.schedule") | fromJsonArray -}}
{{- if gt (len $minutes) 1 -}}
{{- mul 60 (include "azp-agents.cyclicGap" (dict "set" $minutes "size" 60) | int) -}}
{{- else if gt (len $hours) 1 -}}
{{- mul 3600 (include "azp-agents.cyclicGap" (dict "set" $hours "size" 24) | int) -}}
{{- else -}}
86400
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The CronJob's activeDeadlineSeconds: the value, or the schedule period minus 10 s. */}}
{{- define "azp-agents.runDeadline" -}}
{{- $period := include "azp-agents.schedulePeriod" . | int -}}
{{- if gt (int .Values.reconciler.activeDeadlineSeconds) 0 -}}
{{- int .Values.reconciler.activeDeadlineSeconds -}}
{{- else -}}
{{- max 10 (sub $period 10) -}}
{{- end -}}
{{- end -}}

{{/* The jobTemplates key a pool's single template uses: its jobTemplate, or the only key there is. */}}
{{- define "azp-agents.poolTemplateKey" -}}
{{- if .pool.jobTemplate -}}
{{- .pool.jobTemplate -}}
{{- else if eq (len (keys .root.Values.jobTemplates)) 1 -}}
{{- first (keys .root.Values.jobTemplates) -}}
{{- else -}}
{{- fail (printf "pools[%d].jobTemplate: pool %q names no job template and jobTemplates has %d entries: set pools[%d].jobTemplate to one of %s" .index .pool.name (len (keys .root.Values.jobTemplates)) .index (keys .root.Values.jobTemplates | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}

{{/*
Cross-field rules values.schema.json cannot express. Each failure names the key and the fix.
*/}}
{{- define "azp-agents.validateValues" -}}
{{- $url := .Values.organization.url -}}
{{- if not $url -}}
{{- fail "organization.url is required: set it to https://dev.azure.com/ORG (or your Azure DevOps Server collection URL), e.g. --set organization.url=https://dev.azure.com/contoso" -}}
{{- end -}}
{{- if and (hasPrefix "http://" $url) (not .Values.organization.allowInsecureHttp) -}}
{{- fail (printf "organization.url: %q uses http://: use https://, or set organization.allowInsecureHttp=true for an Azure DevOps Server on a trusted network" $url) -}}
{{- end -}}
{{- include "azp-agents.checkOrganizationUrl" . -}}
{{- include "azp-agents.checkPat" . -}}
{{- include "azp-agents.checkFormats" . -}}
{{- include "azp-agents.checkNetwork" . -}}
{{- include "azp-agents.checkPools" . -}}
{{- include "azp-agents.checkContainerBuilds" . -}}
{{- include "azp-agents.checkAci" . -}}
{{- $_ := include "azp-agents.podSecurityLevel" . -}}
{{- if and .Values.auth.pat .Values.auth.existingSecret -}}
{{- fail "auth.pat and auth.existingSecret are both set: give only one (unset auth.pat to use the existing Secret, or unset auth.existingSecret to let the chart create one)" -}}
{{- end -}}
{{- if and (eq .Values.auth.method "pat") (not (or .Values.auth.pat .Values.auth.existingSecret)) -}}
{{- fail "auth.pat or auth.existingSecret is required: --set auth.pat=$AZP_PAT, or name a Secret you created with auth.existingSecret (key auth.existingSecretKey), or set auth.method to workloadIdentity, managedIdentity or servicePrincipal (Entra ID)" -}}
{{- end -}}
{{- include "azp-agents.checkEntraAuth" . -}}
{{- $period := include "azp-agents.schedulePeriod" . | int -}}
{{- $deadline := include "azp-agents.runDeadline" . | int -}}
{{- if ge $deadline $period -}}
{{- fail (printf "reconciler.activeDeadlineSeconds: %d must be below the period of reconciler.schedule %q (%d s): lower it, or 0 for the period minus 10 s" $deadline .Values.reconciler.schedule $period) -}}
{{- end -}}
{{- $loopFor := int .Values.reconciler.loop.loopFor -}}
{{- if ge $loopFor $deadline -}}
{{- fail (printf "reconciler.loop.loopFor: %d s must be below the run deadline of %d s (reconciler.schedule %q runs every %d s): lower reconciler.loop.loopFor or run less often" $loopFor $deadline .Values.reconciler.schedule $period) -}}
{{- end -}}
{{- if ge (int .Values.reconciler.shard.index) (int .Values.reconciler.shard.count) -}}
{{- fail (printf "reconciler.shard.index: %d must be below reconciler.shard.count (%d)" (int .Values.reconciler.shard.index) (int .Values.reconciler.shard.count)) -}}
{{- end -}}
{{- if hasKey .Values.jobTemplates "config" -}}
{{- fail "jobTemplates.config: the name 'config' is reserved for the reconciler's config.yaml: rename the template" -}}
{{- end -}}
{{- if not .Values.pools -}}
{{- fail "pools is empty: add at least one pool, e.g. --set pools[0].name=Default" -}}
{{- end -}}
{{- range $index, $pool := .Values.pools -}}
{{- if $pool.templates -}}
{{- if or $pool.jobTemplate $pool.capabilities -}}
{{- fail (printf "pools[%d]: pool %q has templates and also jobTemplate/capabilities: move them into pools[%d].templates" $index $pool.name $index) -}}
{{- end -}}
{{- $templateNames := dict -}}
{{- range $tIndex, $template := $pool.templates -}}
{{- if hasKey $templateNames $template.name -}}
{{- fail (printf "pools[%d].templates[%d].name: template %q is listed twice" $index $tIndex $template.name) -}}
{{- end -}}
{{- $_ := set $templateNames $template.name true -}}
{{- $key := default $template.name $template.jobTemplate -}}
{{- if not (hasKey $.Values.jobTemplates $key) -}}
{{- fail (printf "pools[%d].templates[%d].jobTemplate: %q is not a key of jobTemplates (%s): add jobTemplates.%s or fix the name" $index $tIndex $key (keys $.Values.jobTemplates | sortAlpha | join ", ") $key) -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- $key := include "azp-agents.poolTemplateKey" (dict "pool" $pool "index" $index "root" $) -}}
{{- if not (hasKey $.Values.jobTemplates $key) -}}
{{- fail (printf "pools[%d].jobTemplate: %q is not a key of jobTemplates (%s): add jobTemplates.%s or fix the name" $index $key (keys $.Values.jobTemplates | sortAlpha | join ", ") $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The reconciler pod spec, shared by the CronJob and the helm test Pod; .args is the azp-reconciler
command line after the program name.
*/}}
{{- define "azp-agents.reconcilerPodSpec" -}}
{{- $root := .root -}}
{{- $reconciler := $root.Values.reconciler -}}
serviceAccountName: {{ include "azp-agents.reconcilerName" $root }}
automountServiceAccountToken: true
enableServiceLinks: false
restartPolicy: Never
{{- with $reconciler.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- with include "azp-agents.imagePullSecrets" $root | fromJsonArray }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $reconciler.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $reconciler.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $reconciler.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: {{ .container }}
    image: {{ include "azp-agents.image" (dict "image" $reconciler.image "defaultTag" $root.Chart.AppVersion) }}
    imagePullPolicy: {{ $reconciler.image.pullPolicy }}
    command:
      - azp-reconciler
      {{- range .args }}
      - {{ . | quote }}
      {{- end }}
    env:
      - name: PYTHONUNBUFFERED
        value: "1"
      {{- with concat (include "azp-agents.reconcilerNetworkEnv" $root | fromJsonArray) $reconciler.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      runAsNonRoot: true
      capabilities:
        drop:
          - ALL
      seccompProfile:
        type: RuntimeDefault
    resources:
      {{- toYaml $reconciler.resources | nindent 6 }}
    volumeMounts:
      - name: config
        mountPath: /etc/azp-agents
        readOnly: true
      {{- if eq $root.Values.auth.method "pat" }}
      - name: pat
        mountPath: /var/run/secrets/azp
        readOnly: true
      {{- else if eq $root.Values.auth.method "servicePrincipal" }}
      - name: service-principal
        mountPath: /var/run/secrets/azp-sp
        readOnly: true
      {{- end }}
      - name: tmp
        mountPath: /tmp
      {{- if and (include "azp-agents.aci" $root) (eq $root.Values.aci.credential "servicePrincipal") }}
      - name: azure-client-secret
        mountPath: {{ include "azp-agents.aciSecretDir" $root }}
        readOnly: true
      {{- end }}
      {{- if include "azp-agents.aciRegistrySources" $root | fromJsonArray }}
      - name: registry-passwords
        mountPath: {{ include "azp-agents.aciRegistryDir" $root }}
        readOnly: true
      {{- end }}
      {{- with concat (include "azp-agents.caVolumeMounts" $root | fromJsonArray) $reconciler.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "azp-agents.configMapName" $root }}
      items:
        - key: config.yaml
          path: config.yaml
        {{- range $name := keys $root.Values.jobTemplates | sortAlpha }}
        - key: {{ $name }}.yaml
          path: templates/{{ $name }}.yaml
        {{- end }}
  {{- if eq $root.Values.auth.method "pat" }}
  - name: pat
    secret:
      secretName: {{ include "azp-agents.secretName" $root }}
      defaultMode: 0440
      items:
        - key: {{ include "azp-agents.secretKey" $root }}
          path: pat
  {{- else if eq $root.Values.auth.method "servicePrincipal" }}
  {{- $sp := $root.Values.auth.servicePrincipal }}
  - name: service-principal
    secret:
      secretName: {{ $sp.existingSecret }}
      defaultMode: 0440
      items:
        {{- if $sp.certificateKey }}
        - key: {{ $sp.certificateKey }}
          path: certificate.pem
        {{- else }}
        - key: {{ $sp.clientSecretKey }}
          path: clientSecret
        {{- end }}
  {{- end }}
  - name: tmp
    emptyDir:
      medium: Memory
      sizeLimit: 64Mi
  {{- if and (include "azp-agents.aci" $root) (eq $root.Values.aci.credential "servicePrincipal") }}
  - name: azure-client-secret
    secret:
      secretName: {{ $root.Values.aci.clientSecret.existingSecret }}
      defaultMode: 0440
      items:
        - key: {{ $root.Values.aci.clientSecret.key }}
          path: client-secret
  {{- end }}
  {{- with include "azp-agents.aciRegistrySources" $root | fromJsonArray }}
  - name: registry-passwords
    projected:
      defaultMode: 0440
      sources:
        {{- toYaml . | nindent 8 }}
  {{- end }}
  {{- with concat (include "azp-agents.caVolumes" $root | fromJsonArray) $reconciler.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* "true" when a template of a pool learns its standby from the queue's history (standbyLearn.enabled). */}}
{{- define "azp-agents.learnsStandby" -}}
{{- range $pool := .Values.pools -}}
{{- range $template := $pool.templates | default list -}}
{{- if ($template.standbyLearn | default dict).enabled -}}true{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
