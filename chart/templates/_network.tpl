{{/*
Proxies and private CAs (values proxy.* and caBundle.*), for the reconciler's pod and the agent pods.
The reconciler (Python `requests`) reads HTTPS_PROXY/NO_PROXY and REQUESTS_CA_BUNDLE; SSL_CERT_FILE is
set too for other OpenSSL users. The agent reads AZP_PROXY_* and AZP_CA_CERT_FILE in start.sh, which
passes them to config.sh (--proxyurl, --proxyusername, --proxypassword, .proxybypass, --sslcacert).
*/}}

{{- define "azp-agents.caMountPath" -}}/etc/azp-agents/ca{{- end -}}

{{/* Fails on proxy and CA values that cannot work, naming the key. */}}
{{- define "azp-agents.checkNetwork" -}}
{{- include "azp-agents.checkFormat" (dict "key" "proxy.url" "value" .Values.proxy.url "format" "httpUrl" "optional" true) -}}
{{- if and .Values.caBundle.configMap .Values.caBundle.existingSecret -}}
{{- fail "caBundle.configMap and caBundle.existingSecret are both set: give only one" -}}
{{- end -}}
{{- if and .Values.proxy.existingSecret (not .Values.proxy.url) -}}
{{- fail "proxy.existingSecret is set but proxy.url is empty: set proxy.url, e.g. http://proxy.example.com:3128" -}}
{{- end -}}
{{- end -}}

{{/* The CA bundle volume, as a JSON list (empty without caBundle). */}}
{{- define "azp-agents.caVolumes" -}}
{{- $ca := .Values.caBundle -}}
{{- $items := list (dict "key" $ca.key "path" "ca.crt") -}}
{{- if $ca.configMap -}}
{{- list (dict "name" "azp-ca-bundle" "configMap" (dict "name" $ca.configMap "items" $items)) | toJson -}}
{{- else if $ca.existingSecret -}}
{{- list (dict "name" "azp-ca-bundle" "secret" (dict "secretName" $ca.existingSecret "items" $items)) | toJson -}}
{{- else -}}
{{- list | toJson -}}
{{- end -}}
{{- end -}}

{{/* The CA bundle's mount, as a JSON list (empty without caBundle). */}}
{{- define "azp-agents.caVolumeMounts" -}}
{{- if or .Values.caBundle.configMap .Values.caBundle.existingSecret -}}
{{- list (dict "name" "azp-ca-bundle" "mountPath" (include "azp-agents.caMountPath" .) "readOnly" true) | toJson -}}
{{- else -}}
{{- list | toJson -}}
{{- end -}}
{{- end -}}

{{/* Proxy credentials from proxy.existingSecret, as env entries named .prefix+USERNAME and .prefix+PASSWORD. */}}
{{- define "azp-agents.proxyCredentialEnv" -}}
{{- $proxy := .root.Values.proxy -}}
{{- $env := list -}}
{{- if $proxy.existingSecret -}}
{{- range $name, $key := dict "USERNAME" $proxy.usernameKey "PASSWORD" $proxy.passwordKey -}}
{{- $ref := dict "secretKeyRef" (dict "name" $proxy.existingSecret "key" $key) -}}
{{- $env = append $env (dict "name" (printf "%s%s" $.prefix $name) "valueFrom" $ref) -}}
{{- end -}}
{{- end -}}
{{- toJson $env -}}
{{- end -}}

{{/*
Env of the reconciler's container (and the BuildKit sidecar's), as a JSON list: HTTPS_PROXY/HTTP_PROXY
(credentials put in the URL by Kubernetes' $(VAR) expansion), NO_PROXY with the Kubernetes API server and
cluster names first, the CA.
*/}}
{{- define "azp-agents.reconcilerNetworkEnv" -}}
{{- $proxy := .Values.proxy -}}
{{- $env := list -}}
{{- if $proxy.url -}}
{{- $env = concat $env (include "azp-agents.proxyCredentialEnv" (dict "root" . "prefix" "AZP_PROXY_") | fromJsonArray) -}}
{{- $url := $proxy.url -}}
{{- if $proxy.existingSecret -}}
{{- $url = regexReplaceAll "^(https?://)" $proxy.url "${1}$(AZP_PROXY_USERNAME):$(AZP_PROXY_PASSWORD)@" -}}
{{- end -}}
{{- $direct := concat (list "$(KUBERNETES_SERVICE_HOST)" "kubernetes.default.svc" ".svc" ".cluster.local" "localhost" "127.0.0.1") $proxy.noProxy -}}
{{- range $name := list "HTTPS_PROXY" "HTTP_PROXY" -}}
{{- $env = append $env (dict "name" $name "value" $url) -}}
{{- end -}}
{{- $env = append $env (dict "name" "NO_PROXY" "value" (join "," $direct)) -}}
{{- end -}}
{{- if include "azp-agents.caVolumes" . | fromJsonArray -}}
{{- $file := printf "%s/ca.crt" (include "azp-agents.caMountPath" .) -}}
{{- $env = concat $env (list (dict "name" "REQUESTS_CA_BUNDLE" "value" $file) (dict "name" "SSL_CERT_FILE" "value" $file)) -}}
{{- end -}}
{{- toJson $env -}}
{{- end -}}

{{/* Env of every agent container, as a JSON list: the AZP_PROXY_* and AZP_CA_CERT_FILE start.sh reads. */}}
{{- define "azp-agents.agentNetworkEnv" -}}
{{- $proxy := .Values.proxy -}}
{{- $env := list -}}
{{- if $proxy.url -}}
{{- $env = append $env (dict "name" "AZP_PROXY_URL" "value" $proxy.url) -}}
{{- with $proxy.agentBypass -}}
{{- $env = append $env (dict "name" "AZP_PROXY_BYPASS" "value" (join "," .)) -}}
{{- end -}}
{{- $env = concat $env (include "azp-agents.proxyCredentialEnv" (dict "root" . "prefix" "AZP_PROXY_") | fromJsonArray) -}}
{{- end -}}
{{- if include "azp-agents.caVolumes" . | fromJsonArray -}}
{{- $env = append $env (dict "name" "AZP_CA_CERT_FILE" "value" (printf "%s/ca.crt" (include "azp-agents.caMountPath" .))) -}}
{{- end -}}
{{- toJson $env -}}
{{- end -}}

{{/* Appends the entries of .extra whose name .target (a list under .owner's .field) lacks; .owner changes in place. */}}
{{- define "azp-agents.appendMissingByName" -}}
{{- $have := list -}}
{{- range (index .owner .field | default list) -}}
{{- $have = append $have .name -}}
{{- end -}}
{{- $list := index .owner .field | default list -}}
{{- range .extra -}}
{{- if not (has .name $have) -}}
{{- $list = append $list . -}}
{{- end -}}
{{- end -}}
{{- if $list -}}
{{- $_ := set .owner .field $list -}}
{{- end -}}
{{- end -}}

{{/*
Gives a job template's pod (.pod) the agent's proxy and CA settings: the env to every container and init
container, the CA volume and its mount. Entries the template sets itself (same name) are kept.
*/}}
{{- define "azp-agents.addAgentNetwork" -}}
{{- $root := .root -}}
{{- $env := include "azp-agents.agentNetworkEnv" $root | fromJsonArray -}}
{{- $mounts := include "azp-agents.caVolumeMounts" $root | fromJsonArray -}}
{{- if or $env $mounts -}}
{{- range $container := concat (.pod.initContainers | default list) (.pod.containers | default list) -}}
{{- include "azp-agents.appendMissingByName" (dict "owner" $container "field" "env" "extra" $env) -}}
{{- include "azp-agents.appendMissingByName" (dict "owner" $container "field" "volumeMounts" "extra" $mounts) -}}
{{- end -}}
{{- include "azp-agents.appendMissingByName" (dict "owner" .pod "field" "volumes" "extra" (include "azp-agents.caVolumes" $root | fromJsonArray)) -}}
{{- end -}}
{{- end -}}
