{{/*
The reconciler's config.yaml (reconciler/config.schema.json), built as data and printed with
toYaml so quoting is never hand-made. Secrets are referenced by path, never copied in.
*/}}
{{- define "azp-agents.templatePath" -}}
{{- printf "/etc/azp-agents/templates/%s.yaml" . -}}
{{- end -}}

{{/* The config's auth section: where the PAT is, or which Entra ID identity (no secret is copied in). */}}
{{- define "azp-agents.authConfig" -}}
{{- $auth := .Values.auth -}}
{{- if eq $auth.method "pat" -}}
{{- toYaml (dict "patFile" "/var/run/secrets/azp/pat") -}}
{{- else -}}
{{- $config := dict "method" $auth.method -}}
{{- range $key := list "tenantId" "clientId" -}}
{{- with get $auth $key -}}
{{- $_ := set $config $key . -}}
{{- end -}}
{{- end -}}
{{- if and $auth.authorityHost (ne $auth.method "managedIdentity") -}}
{{- $_ := set $config "authorityHost" $auth.authorityHost -}}
{{- end -}}
{{- if eq $auth.method "servicePrincipal" -}}
{{- if $auth.servicePrincipal.certificateKey -}}
{{- $_ := set $config "certificateFile" "/var/run/secrets/azp-sp/certificate.pem" -}}
{{- else -}}
{{- $_ := set $config "clientSecretFile" "/var/run/secrets/azp-sp/clientSecret" -}}
{{- end -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
{{- end -}}

{{- define "azp-agents.config" -}}
{{- $reconciler := .Values.reconciler -}}
{{- $policy := $reconciler.podPolicy -}}
{{- $config := dict
  "organization" (trimSuffix "/" .Values.organization.url)
  "release" (include "azp-agents.release" .)
  "namespace" (include "azp-agents.agentNamespace" .)
  "jobNamePrefix" $reconciler.jobNamePrefix
  "auth" (include "azp-agents.authConfig" . | fromYaml)
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
{{- $_ := set $config "agents" (dict "registration" (include "azp-agents.agentRegistration" .)) -}}
{{- if .Values.organization.allowInsecureHttp -}}
{{- $_ := set $config "allowInsecureHttp" true -}}
{{- end -}}
{{- if .Values.agent.allowTokenInAgentContainer -}}
{{- $_ := set $config "allowTokenInAgentContainer" true -}}
{{- else if and (eq .Values.agent.mode "once") (eq (include "azp-agents.agentRegistration" .) "token") -}}
{{- fail "agent.mode=once registers and runs pipeline steps in one container, which can then read the PAT: use agent.mode=split, or accept the risk with agent.allowTokenInAgentContainer=true" -}}
{{- end -}}
{{- if include "azp-agents.aci" . -}}
{{- $_ := set $config "backend" "aci" -}}
{{- $_ := set $config "aci" (include "azp-agents.aciConfig" . | fromJson) -}}
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
{{- $item := pick $template "name" "capabilities" "arch" "priority" "maxAgents" "minIdle" "standby" "standbyLearn" "minAgents" "placeholder" "instances" -}}
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
