{{/* Name of the receiver's objects (Deployment, Service, Ingress, ServiceMonitor). */}}
{{- define "azp-agents.webhookName" -}}
{{- printf "%s-webhook" (include "azp-agents.fullname" .) -}}
{{- end -}}

{{/* The Secret holding the service hook's shared secret under the key `secret`. */}}
{{- define "azp-agents.webhookSecretName" -}}
{{- default (printf "%s-webhook" (include "azp-agents.fullname" .)) .Values.webhook.existingSecret -}}
{{- end -}}

{{/* Rules across the webhook and metrics keys that the schema cannot express. */}}
{{- define "azp-agents.validateWebhook" -}}
{{- $webhook := .Values.webhook -}}
{{- if $webhook.enabled -}}
{{- if and (not $webhook.secret) (not $webhook.existingSecret) -}}
{{- fail "webhook.secret: set a long random string (or webhook.existingSecret, a Secret with the key `secret`): every service hook must carry it" -}}
{{- end -}}
{{- if and $webhook.secret $webhook.existingSecret -}}
{{- fail "webhook.secret and webhook.existingSecret: set only one of them" -}}
{{- end -}}
{{- if eq (not $webhook.tlsSecretName) (not $webhook.insecureHttp) -}}
{{- fail "webhook.tlsSecretName: name a kubernetes.io/tls Secret for HTTPS, or set webhook.insecureHttp: true when an Ingress terminates TLS (set exactly one)" -}}
{{- end -}}
{{- if and $webhook.ingress.enabled (not $webhook.ingress.host) -}}
{{- fail "webhook.ingress.host: set the public host name Azure DevOps posts to" -}}
{{- end -}}
{{- end -}}
{{- include "azp-agents.checkFormat" (dict "key" "metrics.pushgateway" "value" .Values.metrics.pushgateway "format" "httpUrl" "optional" true) -}}
{{- include "azp-agents.checkFormat" (dict "key" "metrics.serviceMonitor.interval" "value" .Values.metrics.serviceMonitor.interval "format" "duration") -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not $webhook.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled: /metrics is served by the receiver, so it needs webhook.enabled: true (CronJob runs push to metrics.pushgateway instead)" -}}
{{- end -}}
{{- end -}}
