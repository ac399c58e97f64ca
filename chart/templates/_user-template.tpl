{{/*
A user's job template as the ConfigMap stores it: parsed and checked at install time (one object, a
Job, Pod or pod spec, no literal token), then given the common pod settings of agent.* wherever the
template does not set its own, and ${AGENT_SERVICE_ACCOUNT} replaced by the agent ServiceAccount.
The reconciler adds the rest at run time (reconciler/render.py).
*/}}

{{/* jobTemplates.<.name> parsed into a map (a copy: the values are never changed); "" is the built-in template. */}}
{{- define "azp-agents.parseJobTemplate" -}}
{{- $key := printf "jobTemplates.%s" .name -}}
{{- $template := index .root.Values.jobTemplates .name -}}
{{- if kindIs "map" $template -}}
{{- toJson $template -}}
{{- else if not (trim ($template | default "")) -}}
{{- include "azp-agents.defaultJobTemplate" .root | fromYaml | toJson -}}
{{- else -}}
{{- $text := trim $template -}}
{{- if not (contains "\n" $text) -}}
{{- if regexMatch "^[^:{]*$" $text -}}
{{- fail (printf "%s: %q is a file path, not a template: pass the file's content with --set-file %s=%s (not --set), or give the template inline in a values file" $key $text $key $text) -}}
{{- end -}}
{{- end -}}
{{- $documents := 0 -}}
{{- range $part := regexSplit "(?m)^---.*$" $text -1 -}}
{{- if regexMatch "(?m)^[ \\t]*[^#\\s]" $part -}}
{{- $documents = add1 $documents -}}
{{- end -}}
{{- end -}}
{{- if gt $documents 1 -}}
{{- fail (printf "%s: the file holds %d YAML documents: give exactly one object, a batch/v1 Job (or a Pod, or a pod spec); put other objects (ConfigMaps, Secrets...) in their own manifests" $key $documents) -}}
{{- end -}}
{{- $parsed := fromYaml $text -}}
{{- if hasKey $parsed "Error" -}}
{{- fail (printf "%s: the template is not valid YAML (%s): check indentation, or pass a file with --set-file %s=job.yaml" $key $parsed.Error $key) -}}
{{- end -}}
{{- toJson $parsed -}}
{{- end -}}
{{- end -}}

{{/*
The path of the pod spec inside a parsed template (.template), as a JSON list of keys; fails with
what to give instead for other kinds.
*/}}
{{- define "azp-agents.podSpecPath" -}}
{{- $template := .template -}}
{{- $kind := $template.kind | default "" -}}
{{- $key := printf "jobTemplates.%s" .name -}}
{{- $instead := "give a batch/v1 Job, a Pod, or a pod spec (the object holding `containers`)" -}}
{{- if eq $kind "Job" -}}
{{- if ne ($template.apiVersion | default "") "batch/v1" -}}
{{- fail (printf "%s: apiVersion %q is not supported for a Job: use batch/v1" $key ($template.apiVersion | default "")) -}}
{{- end -}}
{{- list "spec" "template" "spec" | toJson -}}
{{- else if or (eq $kind "Pod") (and (not $kind) (kindIs "map" $template.spec)) -}}
{{- list "spec" | toJson -}}
{{- else if and (not $kind) (hasKey $template "containers") -}}
{{- list | toJson -}}
{{- else if eq $kind "ScaledJob" -}}
{{- fail (printf "%s: is a KEDA ScaledJob: give its spec.jobTargetRef.template (the pod template, or wrap it in a batch/v1 Job); this chart does the scaling, KEDA is not needed" $key) -}}
{{- else if has $kind (list "Deployment" "StatefulSet" "DaemonSet" "ReplicaSet" "ReplicationController") -}}
{{- fail (printf "%s: is a %s: agents here run one job each as a Job, so give its spec.template (the pod template) or a batch/v1 Job; this chart does the scaling" $key $kind) -}}
{{- else if eq $kind "CronJob" -}}
{{- fail (printf "%s: is a CronJob: give its spec.jobTemplate as a batch/v1 Job (kind: Job, apiVersion: batch/v1, spec: ...)" $key) -}}
{{- else -}}
{{- fail (printf "%s: is a %s, not a job template: %s" $key ($kind | default "document without kind or containers") $instead) -}}
{{- end -}}
{{- end -}}

{{/* Fails when a container of .pod carries a token literal (env value or a --token argument). */}}
{{- define "azp-agents.checkTokenLiterals" -}}
{{- $key := printf "jobTemplates.%s" .name -}}
{{- $names := list "AZP_TOKEN" "VSTS_TOKEN" "VSTS_AGENT_INPUT_TOKEN" "ORG_PAT" "AZURE_DEVOPS_EXT_PAT" -}}
{{- range $container := concat (.pod.initContainers | default list) (.pod.containers | default list) -}}
{{- range $env := $container.env | default list -}}
{{- if and (has $env.name $names) (hasKey $env "value") -}}
{{- fail (printf "%s: container %q sets %s as a literal value: remove it; the reconciler gives the registering container the token from the chart's Secret (auth.pat or auth.existingSecret)" $key $container.name $env.name) -}}
{{- end -}}
{{- end -}}
{{- $line := join " " (concat ($container.command | default list) ($container.args | default list)) -}}
{{- if regexMatch "--token(=|\\s+)['\"]?[^$'\"\\s]" $line -}}
{{- fail (printf "%s: container %q passes a literal --token in its command or args: remove it; the reconciler gives the registering container the token from a file (AZP_TOKEN_FILE)" $key $container.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets as a pod spec wants them: [{name: x}], from names or {name: x} entries. */}}
{{- define "azp-agents.imagePullSecrets" -}}
{{- $secrets := list -}}
{{- range .Values.imagePullSecrets -}}
{{- $secrets = append $secrets (kindIs "map" . | ternary . (dict "name" .)) -}}
{{- end -}}
{{- toJson $secrets -}}
{{- end -}}

{{/* Pod fields every template gets from agent.* unless it sets its own, as a JSON map. */}}
{{- define "azp-agents.podDefaults" -}}
{{- $agent := .Values.agent -}}
{{- $defaults := dict
  "serviceAccountName" (include "azp-agents.agentServiceAccountName" .)
  "nodeSelector" $agent.nodeSelector
  "tolerations" $agent.tolerations
  "affinity" $agent.affinity
  "priorityClassName" $agent.priorityClassName
  "imagePullSecrets" (include "azp-agents.imagePullSecrets" . | fromJsonArray)
-}}
{{- $set := dict -}}
{{- range $name, $value := $defaults -}}
{{- if $value -}}
{{- $_ := set $set $name $value -}}
{{- end -}}
{{- end -}}
{{- toJson $set -}}
{{- end -}}

{{/* Adds the keys of .extra that .target (a map) lacks; .target is changed in place. */}}
{{- define "azp-agents.addMissing" -}}
{{- range $name, $value := .extra -}}
{{- if not (hasKey $.target $name) -}}
{{- $_ := set $.target $name $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The template text of jobTemplates.<.name> for the ConfigMap. */}}
{{- define "azp-agents.userJobTemplate" -}}
{{- $root := .root -}}
{{- $template := include "azp-agents.parseJobTemplate" . | fromJson -}}
{{- $path := include "azp-agents.podSpecPath" (dict "template" $template "name" .name) | fromJsonArray -}}
{{- if not $path -}}
{{- $template = dict "spec" $template -}}
{{- $path = list "spec" -}}
{{- end -}}
{{- $owner := $template -}}
{{- $missing := printf "jobTemplates.%s: %s.containers is missing: a job template needs at least one container" .name (join "." $path) -}}
{{- range $step := initial $path -}}
{{- if not (kindIs "map" (index $owner $step)) -}}
{{- fail $missing -}}
{{- end -}}
{{- $owner = index $owner $step -}}
{{- end -}}
{{- $pod := index $owner (last $path) -}}
{{- if not (and (kindIs "map" $pod) $pod.containers) -}}
{{- fail $missing -}}
{{- end -}}
{{- include "azp-agents.checkTokenLiterals" (dict "pod" $pod "name" .name) -}}
{{- $defaults := include "azp-agents.podDefaults" $root | fromJson -}}
{{- if and $pod.os (hasKey ($defaults.nodeSelector | default dict) "kubernetes.io/os") -}}
{{- /* A template for another OS (os.name: windows) must not inherit the Linux node selector. */ -}}
{{- $_ := set $defaults "nodeSelector" (merge (dict "kubernetes.io/os" $pod.os.name) $defaults.nodeSelector) -}}
{{- end -}}
{{- include "azp-agents.addMissing" (dict "target" $pod "extra" $defaults) -}}
{{- include "azp-agents.addAgentNetwork" (dict "pod" $pod "root" $root) -}}
{{- $metadata := $owner.metadata | default dict -}}
{{- if or $root.Values.agent.podLabels $root.Values.agent.podAnnotations -}}
{{- $_ := set $owner "metadata" $metadata -}}
{{- end -}}
{{- range $field, $extra := dict "labels" $root.Values.agent.podLabels "annotations" $root.Values.agent.podAnnotations -}}
{{- if $extra -}}
{{- $_ := set $metadata $field (merge (get $metadata $field | default (dict)) $extra) -}}
{{- end -}}
{{- end -}}
{{- toYaml $template | replace "${AGENT_SERVICE_ACCOUNT}" (include "azp-agents.agentServiceAccountName" $root) -}}
{{- end -}}
