{{/* Chart name. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every resource name. */}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. Note: not app.kubernetes.io/managed-by=kubetune, which marks
the operator's own children (trainer pods). */}}
{{- define "kubetune.labels" -}}
{{ include "kubetune.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The labels of every object but its component: objects of another component (the
trainers' ServiceAccounts) add their own, and a key must not appear twice (kubeconform
-strict and kustomize refuse duplicate keys; YAML parsers that accept them keep one). */}}
{{- define "kubetune.commonLabels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Trainer pods' ServiceAccount: explicit name, else <fullname>-trainer when watching
namespaces (the chart creates it in each), else `default` (cluster-wide: it must exist in
every namespace that runs jobs, and every namespace has `default`). */}}
{{- define "kubetune.trainerServiceAccountName" -}}
{{- if .Values.trainer.serviceAccount.name }}
{{- .Values.trainer.serviceAccount.name }}
{{- else if .Values.watchNamespaces }}
{{- printf "%s-trainer" (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- "default" }}
{{- end }}
{{- end }}

{{/* Leader election on a Lease: with more than one replica, or asked for. Fails on timings
the operator would refuse (it needs duration > renew deadline > retry period). */}}
{{- define "kubetune.leaderElection" -}}
{{- $le := .Values.leaderElection }}
{{- if not (and (gt (float64 $le.leaseDurationSeconds) (float64 $le.renewDeadlineSeconds)) (gt (float64 $le.renewDeadlineSeconds) (float64 $le.retryPeriodSeconds))) }}
{{- fail "leaderElection: need leaseDurationSeconds > renewDeadlineSeconds > retryPeriodSeconds" }}
{{- end }}
{{- if or $le.enabled (gt (int .Values.replicas) 1) }}true{{ end }}
{{- end }}

{{- define "kubetune.leaseName" -}}
{{- default (include "kubetune.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "kubetune.serviceName" -}}
{{- include "kubetune.fullname" . }}
{{- end }}

{{- define "kubetune.progressURL" -}}
{{- if .Values.service.progressURL }}
{{- .Values.service.progressURL }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "kubetune.serviceName" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}
{{- end }}

{{/* The rules the operator needs wherever FineTuneJobs live, derived from
operator/kubetune/operator/kube.py (its only API calls) and kopf's watches. */}}
{{- define "kubetune.namespacedRules" -}}
# FineTuneJobs: read and watch (kopf's handlers are event handlers: it never patches the
# object), delete (ttl), status writes.
- apiGroups: [kubetune.io]
  resources: [finetunejobs]
  verbs: [get, list, watch, delete]
- apiGroups: [kubetune.io]
  resources: [finetunejobs/status]
  verbs: [patch]
# Trainer workloads: batch Jobs (suspend, restarts and deadlines delete and relaunch them).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# Trainer and probe pods (get: the progress endpoint checks a reporting pod's job label).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
# Per-job children, created once and garbage-collected through owner references.
- apiGroups: [""]
  resources: [configmaps, services, persistentvolumeclaims]
  verbs: [create]
# A name already taken is read: a child of a deleted namesake is waited out, not adopted.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get]
# A multi-node job's output claim must be ReadWriteMany: its access modes are read first.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
# Events on FineTuneJobs (kubectl describe); list: the Job controller's FailedCreate
# Events on a trainer Job whose pods the API server refuses (refusals.py).
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
{{- end }}
