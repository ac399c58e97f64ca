{{/*
The reconciler's config.yaml (reconciler/config.schema.json), built as data and printed with
toYaml so quoting is never hand-made. Secrets are referenced by path, never copied in.
*/}}
{{- define "azp-agents.templatePath" -}}
{{- printf "/etc/azp-agents/templates/%s.yaml" . -}}
{{- end -}}

{{- define "azp-agents.config" -}}
{{- $reconciler := .Values.reconciler -}}
{{- $policy := $reconciler.podPolicy -}}
{{- $config := dict
  "organization" (trimSuffix "/" .Values.organization.url)
  "release" (include "azp-agents.release" .)
  "namespace" (include "azp-agents.agentNamespace" .)
  "jobNamePrefix" $reconciler.jobNamePrefix
  "auth" (dict "patFile" "/var/run/secrets/azp/pat")
  "agentSecret" (dict "name" (include "azp-agents.secretName" .) "key" (include "azp-agents.secretKey" .))
  "ttlSecondsAfterFinished" (int $reconciler.ttlSecondsAfterFinished)
  "lease" (dict "enabled" $reconciler.lease.enabled "namespace" .Release.Namespace "durationSeconds" (int $reconciler.lease.durationSeconds))
  "loop" (dict "loopFor" (int $reconciler.loop.loopFor) "interval" $reconciler.loop.interval "idleInterval" $reconciler.loop.idleInterval)
  "maxCreatePerPass" (int $reconciler.maxCreatePerPass)
  "podPolicy" (dict
    "allowPrivileged" (or $policy.allowPrivileged .Values.agent.privileged)
    "allowHostNetwork" $policy.allowHostNetwork
    "allowHostPath" (or $policy.allowHostPath .Values.agent.dockerSocket.enabled)
    "allowServiceAccountToken" $policy.allowServiceAccountToken)
  "logFormat" $reconciler.logFormat
  "logLevel" $reconciler.logLevel
  "agentVersion" (toString $reconciler.agentVersion)
  "sweepInterval" (int $reconciler.sweepInterval)
  "events" $reconciler.events
  "azureDevOps" (dict "timeoutSeconds" $reconciler.azureDevOps.timeoutSeconds "retries" (int $reconciler.azureDevOps.retries) "apiVersion" (toString (default "auto" .Values.organization.apiVersion)))
-}}
{{- if .Values.organization.allowInsecureHttp -}}
{{- $_ := set $config "allowInsecureHttp" true -}}
{{- end -}}
{{- if .Values.agent.allowTokenInAgentContainer -}}
{{- $_ := set $config "allowTokenInAgentContainer" true -}}
{{- else if eq .Values.agent.mode "once" -}}
{{- fail "agent.mode=once registers and runs pipeline steps in one container, which can then read the PAT: use agent.mode=split, or accept the risk with agent.allowTokenInAgentContainer=true" -}}
{{- end -}}
{{- if gt (int $reconciler.shard.count) 1 -}}
{{- $_ := set $config "shard" (dict "index" (int $reconciler.shard.index) "count" (int $reconciler.shard.count) "takeoverAfterSeconds" (int $reconciler.shard.takeoverAfterSeconds)) -}}
{{- end -}}
{{- $pools := list -}}
{{- range $index, $pool := .Values.pools -}}
{{- $entry := pick $pool "name" "namespace" "maxAgents" "minIdle" "standby" "arch" "minAgents" "provisioningTimeout" "idleTimeout" -}}
{{- if $pool.templates -}}
{{- $templates := list -}}
{{- range $template := $pool.templates -}}
{{- $item := pick $template "name" "capabilities" "arch" "priority" "maxAgents" "minIdle" "standby" "minAgents" "placeholder" -}}
{{- $_ := set $item "jobTemplate" (include "azp-agents.templatePath" (default $template.name $template.jobTemplate)) -}}
{{- $templates = append $templates $item -}}
{{- end -}}
{{- $_ := set $entry "templates" $templates -}}
{{- else -}}
{{- $key := include "azp-agents.poolTemplateKey" (dict "pool" $pool "index" $index "root" $) -}}
{{- $_ := set $entry "jobTemplate" (include "azp-agents.templatePath" $key) -}}
{{- with $pool.capabilities -}}
{{- $_ := set $entry "capabilities" . -}}
{{- end -}}
{{- end -}}
{{- $pools = append $pools $entry -}}
{{- end -}}
{{- $_ := set $config "pools" $pools -}}
{{- toYaml $config -}}
{{- end -}}
