{{/*
backend: aci (Azure Container Instances): the reconciler creates one container group per agent in
aci.resourceGroup through Azure Resource Manager, so the chart makes no agent namespaces, PVCs, agent
ServiceAccounts or agent Roles; it keeps the reconciler's CronJob, its Lease and the PAT Secret.
*/}}

{{- define "azp-agents.aci" -}}
{{- if eq .Values.backend "aci" -}}true{{- end -}}
{{- end -}}

{{/* Where the reconciler reads a service principal's client secret (credential servicePrincipal). */}}
{{- define "azp-agents.aciSecretDir" -}}/var/run/secrets/azure{{- end -}}

{{/* Where the reconciler reads private registries' passwords: file <index> for aci.registries[<index>]. */}}
{{- define "azp-agents.aciRegistryDir" -}}/var/run/secrets/azure-registries{{- end -}}

{{/* The projected volume's sources of aci.registries[].passwordSecret, as a JSON list ([] when none). */}}
{{- define "azp-agents.aciRegistrySources" -}}
{{- $sources := list -}}
{{- if include "azp-agents.aci" . -}}
{{- range $index, $registry := .Values.aci.registries -}}
{{- with $registry.passwordSecret -}}
{{- $item := dict "key" (.key | default "password") "path" (toString $index) -}}
{{- $sources = append $sources (dict "secret" (dict "name" .name "items" (list $item))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $sources -}}
{{- end -}}

{{/* The config's `aci` settings (reconciler/config.schema.json), as JSON. */}}
{{- define "azp-agents.aciConfig" -}}
{{- $aci := .Values.aci -}}
{{- $config := pick $aci "subscriptionId" "resourceGroup" "location" "credential" -}}
{{- range $key := list "tenantId" "clientId" "identity" "authorityHost" "armEndpoint" -}}
{{- with index $aci $key -}}
{{- $_ := set $config $key . -}}
{{- end -}}
{{- end -}}
{{- $registries := list -}}
{{- range $index, $registry := $aci.registries -}}
{{- $entry := pick $registry "server" "identity" "username" -}}
{{- if $registry.passwordSecret -}}
{{- $_ := set $entry "passwordFile" (printf "%s/%d" (include "azp-agents.aciRegistryDir" $) $index) -}}
{{- end -}}
{{- $registries = append $registries $entry -}}
{{- end -}}
{{- with $registries -}}
{{- $_ := set $config "registries" . -}}
{{- end -}}
{{- with $aci.subnetIds -}}
{{- $_ := set $config "subnetIds" . -}}
{{- end -}}
{{- if eq $aci.credential "servicePrincipal" -}}
{{- $_ := set $config "clientSecretFile" (printf "%s/client-secret" (include "azp-agents.aciSecretDir" .)) -}}
{{- end -}}
{{- toJson $config -}}
{{- end -}}

{{/*
Named instances count against their pool's maxAgents (and a template's against its own) like any agent, and
the reconciler keeps the set whole: they must fit (reconciler/config.py says the same to a config file's user).
*/}}
{{- define "azp-agents.checkInstances" -}}
{{- range $index, $pool := .Values.pools -}}
{{- $key := printf "pools[%d]" $index -}}
{{- $total := 0 -}}
{{- $keys := list -}}
{{- $named := list -}}
{{- range $tIndex, $template := $pool.templates | default list -}}
{{- if $template.instances -}}
{{- $tKey := printf "%s.templates[%d]" $key $tIndex -}}
{{- $count := int $template.instances -}}
{{- if and (hasKey $template "maxAgents") (gt $count (int $template.maxAgents)) -}}
{{- fail (printf "%s.instances is %d but %s.maxAgents is %d: lower instances to at most %d, or raise maxAgents" $tKey $count $tKey (int $template.maxAgents) (int $template.maxAgents)) -}}
{{- end -}}
{{- $total = add $total $count -}}
{{- $keys = append $keys $tKey -}}
{{- $named = append $named (printf "%s.instances (%d)" $tKey $count) -}}
{{- end -}}
{{- end -}}
{{- $max := int (hasKey $pool "maxAgents" | ternary $pool.maxAgents 10) -}}
{{- if gt (int $total) $max -}}
{{- $what := join " + " $named -}}
{{- if eq (len $named) 1 -}}
{{- $what = printf "%s.instances" (first $keys) -}}
{{- end -}}
{{- $where := printf "%s.maxAgents is %d%s" $key $max (hasKey $pool "maxAgents" | ternary "" " (unset: the default)") -}}
{{- fail (printf "%s is %d but %s: raise %s.maxAgents to at least %d, or lower instances" $what (int $total) $where $key (int $total)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Cross-field rules of backend: aci the schema cannot express. */}}
{{- define "azp-agents.checkAci" -}}
{{- range $pool := .Values.pools -}}
{{- range $template := $pool.templates -}}
{{- if and $template.instances (not (include "azp-agents.aci" $)) -}}
{{- fail (printf "pools: template %q of pool %q sets instances, which needs backend: aci (a Kubernetes Job does not restart after it succeeds): remove it, or keep agents with minIdle/minAgents" $template.name $pool.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if include "azp-agents.aci" . -}}
{{- include "azp-agents.checkInstances" . -}}
{{- $aci := .Values.aci -}}
{{- range $key := list "subscriptionId" "resourceGroup" "location" -}}
{{- if not (index $aci $key) -}}
{{- fail (printf "aci.%s is required with backend: aci (the subscription, existing resource group and region of the agents' container groups)" $key) -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$" $aci.subscriptionId) -}}
{{- fail (printf "aci.subscriptionId: %q is not a subscription id: give the GUID of the subscription (az account show --query id)" $aci.subscriptionId) -}}
{{- end -}}
{{- $ids := concat (list $aci.identity) $aci.subnetIds -}}
{{- range $index, $registry := $aci.registries -}}
{{- $ids = append $ids $registry.identity -}}
{{- if and $registry.username (not ($registry.passwordSecret).name) -}}
{{- fail (printf "aci.registries[%d]: username %q needs passwordSecret.name (a Secret holding the registry's password; passwordSecret.key defaults to password)" $index $registry.username) -}}
{{- end -}}
{{- if and $registry.passwordSecret (not $registry.username) -}}
{{- fail (printf "aci.registries[%d]: passwordSecret needs the registry's username beside it" $index) -}}
{{- end -}}
{{- if not (or $registry.identity $registry.username) -}}
{{- fail (printf "aci.registries[%d]: registry %q needs identity (a managed identity with AcrPull) or username and passwordSecret" $index $registry.server) -}}
{{- end -}}
{{- end -}}
{{- range $id := $ids -}}
{{- if and $id (not (hasPrefix "/subscriptions/" $id)) -}}
{{- fail (printf "aci: %q is not an Azure resource id: aci.identity, aci.subnetIds and aci.registries[].identity take ids that start with /subscriptions/" $id) -}}
{{- end -}}
{{- end -}}
{{- if and (eq $aci.credential "servicePrincipal") (not (and $aci.tenantId $aci.clientId $aci.clientSecret.existingSecret)) -}}
{{- fail "aci.credential=servicePrincipal needs aci.tenantId, aci.clientId and aci.clientSecret.existingSecret (a Secret holding the client secret)" -}}
{{- end -}}
{{- range $pool := .Values.pools -}}
{{- if $pool.namespace -}}
{{- fail (printf "pools: pool %q sets namespace, but with backend: aci its container groups live in aci.resourceGroup: remove it" $pool.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The built-in container group template (jobTemplates.<name>: "" on ACI): agent.image, register in an init
container, run in the agent container, the agent's state in an emptyDir (reconciler/container_groups.py). */}}
{{- define "azp-agents.defaultGroupTemplate" -}}
{{- $image := include "azp-agents.image" (dict "image" .Values.agent.image "defaultTag" .Values.reconciler.agentVersion) -}}
{{- $state := list (dict "name" "agent-state" "mountPath" "/azp/state") -}}
{{- $register := dict "name" "register" "properties" (dict "image" $image "command" (list "/azp/start.sh" "register") "volumeMounts" $state) -}}
{{- $resources := dict "requests" (dict "cpu" .Values.aci.cpu "memoryInGB" .Values.aci.memoryInGB) -}}
{{- $agent := dict "name" "agent" "properties" (dict "image" $image "command" (list "/azp/start.sh" "run") "resources" $resources "volumeMounts" $state) -}}
{{- $properties := dict "osType" "Linux" "initContainers" (list $register) "containers" (list $agent) "volumes" (list (dict "name" "agent-state" "emptyDir" dict)) -}}
{{- toYaml (dict "properties" $properties) -}}
{{- end -}}

{{/* jobTemplates.<.name> on ACI: a container group template (YAML/JSON, ARM shape), checked for containers. */}}
{{- define "azp-agents.groupTemplate" -}}
{{- $template := index .root.Values.jobTemplates .name -}}
{{- if and (not (kindIs "map" $template)) (not (trim ($template | default ""))) -}}
{{- include "azp-agents.defaultGroupTemplate" .root -}}
{{- else -}}
{{- $parsed := $template -}}
{{- if not (kindIs "map" $template) -}}
{{- $parsed = fromYaml $template -}}
{{- end -}}
{{- $body := $parsed -}}
{{- if $parsed.resources -}}
{{- $body = first $parsed.resources -}}
{{- end -}}
{{- if not (and (kindIs "map" $body.properties) $body.properties.containers) -}}
{{- fail (printf "jobTemplates.%s: with backend: aci a template is a container group (properties.containers, ARM shape): %s" .name ($parsed.Error | default "properties.containers is missing")) -}}
{{- end -}}
{{- toYaml $parsed -}}
{{- end -}}
{{- end -}}
