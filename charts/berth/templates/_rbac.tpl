{{/*
What the operator does in a watched namespace. Verbs are exact: kopf lists and watches,
patches status and finalizers with merge/JSON patches, and the operator creates, patches
and deletes the children it owns. The route kind follows settings.routing.mode.
*/}}
{{- define "berth.rules.namespaced" -}}
# Berth's own resources: watched, finalizers and annotations patched by kopf.
- apiGroups: ["berth.dev"]
  resources: ["models", "endpointconfigs", "endpoints", "transformjobs", "monitoringschedules"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["berth.dev"]
  resources:
  - "models/status"
  - "endpointconfigs/status"
  - "endpoints/status"
  - "transformjobs/status"
  - "monitoringschedules/status"
  verbs: ["get", "patch"]
# Children carry ownerReferences with blockOwnerDeletion to their Endpoint, TransformJob or
# MonitoringSchedule; clusters with the OwnerReferencesPermissionEnforcement admission plugin
# require this.
- apiGroups: ["berth.dev"]
  resources: ["endpoints/finalizers", "transformjobs/finalizers", "monitoringschedules/finalizers"]
  verbs: ["update"]
# The fleets of each Endpoint.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
# Batch transform: one Indexed Job per TransformJob. Monitoring: one CronJob per MonitoringSchedule.
- apiGroups: ["batch"]
  resources: ["jobs", "cronjobs"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
# Routing: weighted HTTPRoutes (mode gateway) or ingress-nginx canary Ingresses (mode ingress).
# Both, whatever the mode: deleting an Endpoint removes children of either kind, which also
# cleans up after a change of settings.routing.mode.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
# Invoke authentication: a NetworkPolicy per Endpoint, and the ServiceAccount serving pods of
# KubernetesRBAC Endpoints run as (one per namespace, created once, never deleted by Berth).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create", "get", "patch"]
# Async inference: the front door's routes (a ConfigMap per async Endpoint).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
# Request-based autoscaling with settings.autoscaling.scaler keda, and async variants' scaling.
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
# Serverless variants: the KEDA HTTP add-on's object per variant.
- apiGroups: ["http.keda.sh"]
  resources: ["httpscaledobjects"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
# Pod failures (image pull, crash loop, unschedulable) and pod IPs for the rollback checks.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Events about the Berth objects, posted by the operator and by kopf.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* Serverless variants: the ReferenceGrant (one per Endpoint namespace, in the interceptor's
namespace) that lets HTTPRoutes send to the KEDA HTTP add-on's interceptor. */}}
{{- define "berth.rules.interceptor" -}}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["referencegrants"]
  verbs: ["create", "get", "patch"]
{{- end -}}

{{/* Cluster-scoped reads kopf makes to follow namespaces and CRDs. */}}
{{- define "berth.rules.discovery" -}}
# kopf: follow namespaces appearing and going, and CRDs being installed or upgraded.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end -}}
