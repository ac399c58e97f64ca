"""An emulator of the Kubernetes API server, its Job and garbage-collection controllers and a kubelet:
a real HTTP server on 127.0.0.1 that the official `kubernetes` Python client and `kubectl` use
unchanged through a kubeconfig it writes.

It follows the API conventions: discovery documents, typed lists with a resourceVersion, server-side
defaulting (uid, a global resourceVersion counter, creationTimestamp, generateName), metav1.Status
errors with the API server's messages, set-based label selectors and basic field selectors, limit and
continue, DeleteOptions propagation, dryRun=All, optimistic concurrency on update, merge, strategic and
JSON patches, strict schema validation (kubernetes-validate), optional RBAC by bearer token, and
kubectl's Table view. Controllers (run by `tick()`, in the background every 50 ms while serving) turn
Jobs into Pods, count them, enforce backoffLimit, activeDeadlineSeconds and ttlSecondsAfterFinished,
garbage-collect by ownerReferences, and a simulated kubelet schedules and starts pods, or leaves them
Pending for an image-pull failure or an unschedulable request.

Choices where the real server differs or the emulator simplifies:
- unknown fields on create and update follow the `fieldValidation` parameter as the API server's decoder
  does (k8s.io/apiserver handlers/create.go and update.go; KEP-2885 "Server Side Unknown Field
  Validation"): `Strict` answers 400 BadRequest `Job in version "v1" cannot be handled as a Job: strict
  decoding error: unknown field "spec.x"`, `Warn` (the default since 1.27) drops them and sends one
  `Warning: 299 - "unknown field \"spec.x\""` header per field, `Ignore` drops them silently. Duplicate
  JSON keys (also reported by Strict) are not detected: the body is parsed before validation;
- a list with limit/continue pages through the current state, not a snapshot at the first page's
  resourceVersion; continue tokens never expire;
- there is one ResourceVersion counter for all kinds, and no watch history: a watch streams the
  current objects as ADDED, then changes it sees every 50 ms;
- strategic merge patch knows the merge keys of the fields the reconciler's objects use only;
- pods get no job-tracking finalizer; a Job counts a pod deleted before finishing as failed;
- Pod Security admission (`pod_security`) enforces and warns as pod-security-admission v0.35.4 does, but
  keeps no audit log and has no exemptions, and the Job controller's repeated FailedCreate events are not
  aggregated by a recorder;
- a value of the wrong JSON type (a container that is a string) is a 422 Invalid naming the field, from the
  schema check, where the real decoder answers 400 BadRequest "cannot unmarshal string into Go struct field";
- privileged containers are allowed (kube-apiserver --allow-privileged=true, as kubeadm, kind and AKS run it).

Deliberate differences from a real kube-apiserver v1.35.4 that tests/realkube/test_differential.py
finds (it lists them in KNOWN and fails on any other): the 422 message of a change to an immutable Job
template says `Invalid value: "object"` where the real one prints the whole Go struct of the template,
and that of a forbidden pod spec change omits the real one's trailing diff of the two specs (both are
renderings of Go values, not API).

The package is split by concern: `core` (the cluster object, its state and in-process helpers),
`routing` (paths, discovery, dispatch, the HTTP handler, watch), `store` (objects, create/update/patch/
delete, lists), `admission` (namespace checks, field validation, dryRun, warnings), `pod_security` (the
Pod Security Standards and their admission), `access` (tokens
and RBAC), `controllers` (Job, TTL, garbage collector, namespaces, Events), `scheduling` (nodes,
scheduler and kubelet) and `environment` (what a container sees: env, Secret and ConfigMap files).
"""

from azp_simulation.kube_emulator.core import KubernetesEmulator
from azp_simulation.kube_emulator.environment import _expand, _field_value
from azp_simulation.kube_emulator.scheduling import IMAGE_MODES, ImagePolicy, PodHook
from azp_simulation.kube_support import KubeCall, KubeError, RbacSubject, rbac_subject_from_file

__all__ = [
    "IMAGE_MODES",
    "ImagePolicy",
    "KubeCall",
    "KubeError",
    "KubernetesEmulator",
    "PodHook",
    "RbacSubject",
    "_expand",
    "_field_value",
    "rbac_subject_from_file",
]
