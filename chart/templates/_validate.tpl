{{/*
Checks of single values, in plain words. values.schema.json checks types and keys; every format rule
lives here instead of in a schema `pattern`, because helm prints a failed pattern as a bare regular
expression. Each failure names the chart key, the value and how to write it.
*/}}

{{/* Fails unless .value matches .pattern; .expected says, in words, what the key takes. */}}
{{- define "azp-agents.mustMatch" -}}
{{- if not (regexMatch .pattern (toString .value)) -}}
{{- fail (printf "%s: %q is not %s" .key (toString .value) .expected) -}}
{{- end -}}
{{- end -}}

{{- define "azp-agents.formats" -}}
{{- dict
  "dnsLabel" (list "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" "a namespace name: up to 63 lower-case letters, digits and '-', starting and ending with a letter or digit")
  "objectName" (list "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$" "a Kubernetes object name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit")
  "templateName" (list "^[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?$" "a template name: up to 16 lower-case letters, digits and '-', starting and ending with a letter or digit")
  "quantity" (list "^[0-9]+(\\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$" "a Kubernetes quantity: write memory as 4Gi or 4G (not 4GB), CPU as 500m or 2")
  "size" (list "^[0-9]+(\\.[0-9]+)?(k|Ki|M|Mi|G|Gi|T|Ti|P|Pi)?$" "a storage size: write it as 20Gi or 20G (not 20GB)")
  "tag" (list "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$" "an image tag: up to 128 letters, digits, '_', '.' and '-' (a sha256: digest goes in .digest)")
  "digest" (list "^sha256:[a-f0-9]{64}$" "an image digest: sha256: followed by 64 lower-case hexadecimal digits")
  "timeZone" (list "^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$" "a time zone name of the tz database, such as Europe/Paris or UTC")
  "jobNamePrefix" (list "^[a-z]([-a-z0-9]{0,10}[a-z0-9])?$" "a name prefix: 1 to 12 lower-case letters, digits and '-', starting with a letter")
  "version" (list "^[0-9]+(\\.[0-9]+){1,3}$" "an agent version such as 4.269.0")
  "envName" (list "^[-._a-zA-Z][-._a-zA-Z0-9]*$" "an environment variable name: letters, digits, '_', '-' and '.', not starting with a digit")
  "absolutePath" (list "^/" "an absolute path such as /var/run/docker.sock")
  "capability" (list "^\\S+$" "a capability name: no spaces")
  "secretKey" (list "^[-._a-zA-Z0-9]+$" "a Secret key: letters, digits, '-', '_' and '.'")
  "httpUrl" (list "^https?://[^\\s/]+" "an http:// or https:// URL such as http://pushgateway.monitoring:9091")
  "duration" (list "^[0-9]+(ms|s|m|h)$" "a Prometheus duration such as 30s or 1m")
  "guid" (list "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$" "a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47 (Microsoft Entra admin center > the app or identity > Overview)")
  "tenant" (list "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?\\.[A-Za-z]{2,})$" "a tenant ID (a GUID) or a verified domain such as contoso.onmicrosoft.com")
  "httpsHost" (list "^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$" "an https:// host such as https://login.microsoftonline.com, with no path")
  "nameOverride" (list "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$" "a name: lower-case letters, digits and '-', starting and ending with a letter or digit")
  | toJson -}}
{{- end -}}

{{/* Fails unless .value has the named format (.format, a key of azp-agents.formats); "" passes when .optional. */}}
{{- define "azp-agents.checkFormat" -}}
{{- $format := index (include "azp-agents.formats" . | fromJson) .format -}}
{{- if or (not .optional) (ne (toString .value) "") -}}
{{- include "azp-agents.mustMatch" (dict "key" .key "value" .value "pattern" (first $format) "expected" (last $format)) -}}
{{- end -}}
{{- end -}}

{{/* Every quantity of a resources map (.resources) under .key. */}}
{{- define "azp-agents.checkResources" -}}
{{- range $section := list "requests" "limits" -}}
{{- range $name, $quantity := (index $.resources $section | default dict) -}}
{{- include "azp-agents.checkFormat" (dict "key" (printf "%s.%s.%s" $.key $section $name) "value" $quantity "format" "quantity") -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* An image {repository, tag, digest} under .key: the tag and digest go in their own keys. */}}
{{- define "azp-agents.checkImage" -}}
{{- $image := .image -}}
{{- $last := last (splitList "/" $image.repository) -}}
{{- if contains "@" $image.repository -}}
{{- fail (printf "%s.repository: %q holds a digest: set %s.repository=%s and %s.digest=%s" .key $image.repository .key (first (splitList "@" $image.repository)) .key (last (splitList "@" $image.repository))) -}}
{{- end -}}
{{- if contains ":" $last -}}
{{- $bare := trimSuffix (printf ":%s" (last (splitList ":" $last))) $image.repository -}}
{{- fail (printf "%s.repository: %q already holds a tag: set %s.repository=%s and %s.tag=%s" .key $image.repository .key $bare .key (last (splitList ":" $last))) -}}
{{- end -}}
{{- include "azp-agents.checkFormat" (dict "key" (printf "%s.tag" .key) "value" $image.tag "format" "tag" "optional" true) -}}
{{- include "azp-agents.checkFormat" (dict "key" (printf "%s.digest" .key) "value" $image.digest "format" "digest" "optional" true) -}}
{{- end -}}

{{/*
organization.url: an organization, not a project or a page inside one. dev.azure.com/ORG and
ORG.visualstudio.com take no further path; a server collection URL keeps its path.
*/}}
{{- define "azp-agents.checkOrganizationUrl" -}}
{{- $url := .Values.organization.url -}}
{{- $how := "use https://dev.azure.com/ORG, https://ORG.visualstudio.com or https://SERVER/COLLECTION for Azure DevOps Server" -}}
{{- if not (regexMatch "^https?://[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?(/[^\\s?#]*)?$" $url) -}}
{{- fail (printf "organization.url: %q is not an organization URL: %s" $url $how) -}}
{{- end -}}
{{- $parsed := urlParse $url -}}
{{- $segments := compact (splitList "/" $parsed.path) -}}
{{- if and (eq $parsed.hostname "dev.azure.com") (ne (len $segments) 1) -}}
{{- fail (printf "organization.url: %q is not an organization URL: use https://dev.azure.com/ORG, without a project or any further path" $url) -}}
{{- end -}}
{{- if and (hasSuffix ".visualstudio.com" $parsed.hostname) $segments -}}
{{- fail (printf "organization.url: %q names a project after the organization: use https://%s, without %s" $url $parsed.hostname $parsed.path) -}}
{{- end -}}
{{- range $segments -}}
{{- if hasPrefix "_" . -}}
{{- fail (printf "organization.url: %q points inside a project (%s): %s" $url . $how) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* auth.pat: refuse the values people paste from examples instead of their token. */}}
{{- define "azp-agents.checkPat" -}}
{{- $pat := trim .Values.auth.pat -}}
{{- $placeholder := "(?i)^(<.*>|\\$.*|\\{\\{.*\\}\\}|%.*%|x+|\\*+|\\.+|your[-_ ]?(pat|token|personal[-_ ]?access[-_ ]?token)|my[-_ ]?(pat|token)|pat|token|secret|password|changeme|change[-_ ]?me|replace[-_ ]?me|todo|tbd|placeholder|dummy|redacted)$" -}}
{{- if and $pat (regexMatch $placeholder $pat) -}}
{{- fail (printf "auth.pat: %q is a placeholder, not a personal access token: pass your PAT, e.g. --set auth.pat=\"$AZP_PAT\" with AZP_PAT exported in your shell (scope Agent Pools: read & manage)" $pat) -}}
{{- end -}}
{{- if regexMatch "\\s" $pat -}}
{{- fail "auth.pat: the token holds spaces or line breaks: paste it alone, or use auth.existingSecret" -}}
{{- end -}}
{{- end -}}

{{/* reconciler.schedule: 5 cron fields or a macro; a time zone belongs in reconciler.timeZone. */}}
{{- define "azp-agents.checkSchedule" -}}
{{- $schedule := trim .Values.reconciler.schedule -}}
{{- if regexMatch "^(CRON_)?TZ=" $schedule -}}
{{- fail (printf "reconciler.schedule: %q holds a time zone: Kubernetes refuses CRON_TZ/TZ in a schedule; set reconciler.timeZone=%s and reconciler.schedule to the 5 fields alone" $schedule (regexReplaceAll "^(CRON_)?TZ=(\\S*).*$" $schedule "${2}")) -}}
{{- end -}}
{{- $field := "(\\*|\\?|[0-9A-Za-z]{1,3}(-[0-9A-Za-z]{1,3})?)(/[1-9][0-9]?)?" -}}
{{- $fields := printf "^%s(,%s)*$" $field $field -}}
{{- $parts := regexSplit "\\s+" $schedule -1 -}}
{{- $valid := or (regexMatch "^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$" $schedule) (eq (len $parts) 5) -}}
{{- range $parts -}}
{{- if not (or (hasPrefix "@" .) (regexMatch $fields .)) -}}
{{- $valid = false -}}
{{- end -}}
{{- end -}}
{{- if not $valid -}}
{{- fail (printf "reconciler.schedule: %q is not a cron schedule: give 5 fields (minute hour day month weekday) such as \"* * * * *\" or \"*/2 8-18 * * MON-FRI\", or @hourly/@daily; the time zone goes in reconciler.timeZone" $schedule) -}}
{{- end -}}
{{- end -}}

{{/* The format of every key the schema leaves to us. */}}
{{- define "azp-agents.checkFormats" -}}
{{- $v := .Values -}}
{{- $checks := list
  (list "auth.existingSecret" $v.auth.existingSecret "objectName" true)
  (list "auth.existingSecretKey" $v.auth.existingSecretKey "secretKey" false)
  (list "auth.tenantId" $v.auth.tenantId "tenant" true)
  (list "auth.clientId" $v.auth.clientId "guid" true)
  (list "auth.authorityHost" $v.auth.authorityHost "httpsHost" true)
  (list "auth.servicePrincipal.existingSecret" $v.auth.servicePrincipal.existingSecret "objectName" true)
  (list "nameOverride" $v.nameOverride "nameOverride" true)
  (list "fullnameOverride" $v.fullnameOverride "nameOverride" true)
  (list "agent.namespace" $v.agent.namespace "dnsLabel" true)
  (list "agent.workSizeLimit" $v.agent.workSizeLimit "size" true)
  (list "agent.dockerSocket.path" $v.agent.dockerSocket.path "absolutePath" false)
  (list "agent.buildkit.stateSizeLimit" $v.agent.buildkit.stateSizeLimit "size" true)
  (list "reconciler.timeZone" $v.reconciler.timeZone "timeZone" true)
  (list "reconciler.jobNamePrefix" $v.reconciler.jobNamePrefix "jobNamePrefix" false)
  (list "reconciler.agentVersion" $v.reconciler.agentVersion "version" false)
-}}
{{- range $index, $secret := include "azp-agents.imagePullSecrets" . | fromJsonArray -}}
{{- $checks = append $checks (list (printf "imagePullSecrets[%d]" $index) $secret.name "objectName" false) -}}
{{- end -}}
{{- range $index, $env := $v.agent.extraEnv -}}
{{- $checks = append $checks (list (printf "agent.extraEnv[%d].name" $index) $env.name "envName" false) -}}
{{- end -}}
{{- range $name, $cache := $v.caches -}}
{{- $checks = append $checks (list (printf "caches.%s.size" $name) $cache.size "size" false) -}}
{{- $checks = append $checks (list (printf "caches.%s.storageClass" $name) $cache.storageClass "objectName" true) -}}
{{- $checks = append $checks (list (printf "caches.%s.existingClaim" $name) $cache.existingClaim "objectName" true) -}}
{{- end -}}
{{- range $name := keys $v.jobTemplates | sortAlpha -}}
{{- $checks = append $checks (list (printf "jobTemplates.%s" $name) $name "templateName" false) -}}
{{- end -}}
{{- range $check := $checks -}}
{{- include "azp-agents.checkFormat" (dict "key" (index $check 0) "value" (index $check 1) "format" (index $check 2) "optional" (index $check 3)) -}}
{{- end -}}
{{- include "azp-agents.checkResources" (dict "key" "agent.resources" "resources" $v.agent.resources) -}}
{{- include "azp-agents.checkResources" (dict "key" "agent.registerResources" "resources" $v.agent.registerResources) -}}
{{- include "azp-agents.checkResources" (dict "key" "reconciler.resources" "resources" $v.reconciler.resources) -}}
{{- include "azp-agents.checkImage" (dict "key" "agent.image" "image" $v.agent.image) -}}
{{- include "azp-agents.checkImage" (dict "key" "agent.buildkit.image" "image" $v.agent.buildkit.image) -}}
{{- include "azp-agents.checkResources" (dict "key" "agent.buildkit.resources" "resources" $v.agent.buildkit.resources) -}}
{{- include "azp-agents.checkImage" (dict "key" "reconciler.image" "image" $v.reconciler.image) -}}
{{- end -}}

{{/*
A pool's or template's minIdle, minAgents and standby windows' minIdle never above its maxAgents
(.entry at .key); an unset
maxAgents is .defaultMax (the reconciler's default: 10 for a pool, the pool's for a template).
*/}}
{{- define "azp-agents.checkCounts" -}}
{{- $max := int (hasKey .entry "maxAgents" | ternary .entry.maxAgents .defaultMax) -}}
{{- $where := hasKey .entry "maxAgents" | ternary (printf "%s.maxAgents" .key) (printf "%s.maxAgents, unset, so %s" .key .from) -}}
{{- range $name := list "minIdle" "minAgents" -}}
{{- if and (hasKey $.entry $name) (gt (int (index $.entry $name)) $max) -}}
{{- fail (printf "%s.%s: %d is above %s (%d): lower %s or raise maxAgents" $.key $name (int (index $.entry $name)) $where $max $name) -}}
{{- end -}}
{{- end -}}
{{- range $index, $window := .entry.standby | default list -}}
{{- if gt (int $window.minIdle) $max -}}
{{- fail (printf "%s.standby[%d].minIdle: %d is above %s (%d): lower it or raise maxAgents" $.key $index (int $window.minIdle) $where $max) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Per pool: names, counts and formats. Azure DevOps pool names are case-insensitive, so two entries
differing only in case are the same pool served twice.
*/}}
{{- define "azp-agents.checkPools" -}}
{{- $seen := dict -}}
{{- range $index, $pool := .Values.pools -}}
{{- $key := printf "pools[%d]" $index -}}
{{- $lower := lower $pool.name -}}
{{- if hasKey $seen $lower -}}
{{- if eq $pool.name (index $seen $lower) -}}
{{- fail (printf "%s.name: pool %q is listed twice: merge the entries" $key $pool.name) -}}
{{- end -}}
{{- fail (printf "%s.name: pool %q is the same Azure DevOps pool as %q (pool names ignore case): merge the entries" $key $pool.name (index $seen $lower)) -}}
{{- end -}}
{{- $_ := set $seen $lower $pool.name -}}
{{- $poolMax := int (hasKey $pool "maxAgents" | ternary $pool.maxAgents 10) -}}
{{- include "azp-agents.checkCounts" (dict "key" $key "entry" $pool "defaultMax" 10 "from" "the default") -}}
{{- include "azp-agents.checkFormat" (dict "key" (printf "%s.namespace" $key) "value" ($pool.namespace | default "") "format" "dnsLabel" "optional" true) -}}
{{- include "azp-agents.checkFormat" (dict "key" (printf "%s.jobTemplate" $key) "value" ($pool.jobTemplate | default "") "format" "templateName" "optional" true) -}}
{{- range $name, $_ := $pool.capabilities -}}
{{- include "azp-agents.checkFormat" (dict "key" (printf "%s.capabilities" $key) "value" $name "format" "capability") -}}
{{- end -}}
{{- range $tIndex, $template := $pool.templates -}}
{{- $tKey := printf "%s.templates[%d]" $key $tIndex -}}
{{- include "azp-agents.checkCounts" (dict "key" $tKey "entry" $template "defaultMax" $poolMax "from" "the pool's") -}}
{{- include "azp-agents.checkFormat" (dict "key" (printf "%s.name" $tKey) "value" $template.name "format" "templateName") -}}
{{- include "azp-agents.checkFormat" (dict "key" (printf "%s.jobTemplate" $tKey) "value" ($template.jobTemplate | default "") "format" "templateName" "optional" true) -}}
{{- range $name, $_ := $template.capabilities -}}
{{- include "azp-agents.checkFormat" (dict "key" (printf "%s.capabilities" $tKey) "value" $name "format" "capability") -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Pod Security level agent pods need: privileged when the values allow privilege, the host network, a hostPath or rootless BuildKit. */}}
{{- define "azp-agents.podSecurityNeeds" -}}
{{- $policy := .Values.reconciler.podPolicy -}}
{{- ternary "privileged" "restricted" (or .Values.agent.privileged .Values.agent.dockerSocket.enabled .Values.agent.buildkit.enabled $policy.allowPrivileged $policy.allowHostNetwork $policy.allowHostPath) -}}
{{- end -}}

{{/*
The container-build options of the built-in template: the docker socket needs the group that owns
it, and each option only acts on the built-in template (jobTemplates.<key>: ""), so with no such key
the option would silently do nothing.
*/}}
{{- define "azp-agents.checkContainerBuilds" -}}
{{- $agent := .Values.agent -}}
{{- $on := list -}}
{{- range $key, $enabled := dict "agent.buildkit.enabled" $agent.buildkit.enabled "agent.dockerSocket.enabled" $agent.dockerSocket.enabled "agent.privileged" $agent.privileged -}}
{{- if $enabled -}}
{{- $on = append $on $key -}}
{{- end -}}
{{- end -}}
{{- if and $agent.buildkit.enabled (semverCompare "<1.30-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "agent.buildkit.enabled: needs Kubernetes 1.30 or later (the sidecar is a native sidecar, GA in 1.33 and on by default since 1.29; its securityContext.appArmorProfile field came in 1.30), and this cluster is %s (helm template: pass --kube-version): upgrade, or add BuildKit to your own job template (chart README, \"Container builds\")" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if and $agent.dockerSocket.enabled (not (int64 $agent.dockerSocket.groupId)) -}}
{{- fail (printf "agent.dockerSocket.groupId: required with agent.dockerSocket.enabled: give the group id that owns %s on the nodes (`stat -c %%g %s` on a node; Docker's packages make it the `docker` group), so the agent (uid 10001) may open the socket; or use agent.buildkit.enabled instead, which needs no socket" $agent.dockerSocket.path $agent.dockerSocket.path) -}}
{{- end -}}
{{- $builtIn := list -}}
{{- range $name, $template := .Values.jobTemplates -}}
{{- if and (kindIs "string" $template) (not (trim $template)) -}}
{{- $builtIn = append $builtIn $name -}}
{{- end -}}
{{- end -}}
{{- if and $on (not $builtIn) -}}
{{- fail (printf "%s: acts on the built-in job template only, and no jobTemplates key uses it (\"\"): add the sidecar, socket or privilege to your own template (chart README, \"Container builds\"), or keep a built-in key" (first $on)) -}}
{{- end -}}
{{- end -}}

{{/*
The Pod Security level of the namespaces the chart creates: privileged when agents or job templates
may ask for privilege, the host network or a hostPath (baseline refuses all three), or run rootless
BuildKit (baseline refuses its seccomp and AppArmor `Unconfined`: the pod-security-admission checks
seccompProfile_baseline and appArmorProfile), else restricted; agent.namespaceLabels may set another
level, but not one that would reject what the values allow.
*/}}
{{- define "azp-agents.podSecurityLevel" -}}
{{- $policy := .Values.reconciler.podPolicy -}}
{{- $needs := include "azp-agents.podSecurityNeeds" . -}}
{{- $label := "pod-security.kubernetes.io/enforce" -}}
{{- $level := index .Values.agent.namespaceLabels $label | default $needs -}}
{{- if and (eq $needs "privileged") (ne $level "privileged") .Values.agent.createNamespaces -}}
{{- $asks := list -}}
{{- range $key, $on := dict "agent.privileged" .Values.agent.privileged "agent.dockerSocket.enabled" .Values.agent.dockerSocket.enabled "agent.buildkit.enabled" .Values.agent.buildkit.enabled "reconciler.podPolicy.allowPrivileged" $policy.allowPrivileged "reconciler.podPolicy.allowHostNetwork" $policy.allowHostNetwork "reconciler.podPolicy.allowHostPath" $policy.allowHostPath -}}
{{- if $on -}}
{{- $asks = append $asks $key -}}
{{- end -}}
{{- end -}}
{{- fail (printf "agent.namespaceLabels: %s=%s makes the Pod Security admission reject the pods that %s allow: remove the label (the chart then labels its namespaces privileged), or turn those values off" $label $level (join ", " $asks)) -}}
{{- end -}}
{{- $level -}}
{{- end -}}
