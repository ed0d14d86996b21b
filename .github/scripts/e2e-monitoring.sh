#!/usr/bin/env bash
# The monitoring scenario on the kind cluster: an Endpoint capturing every request to the
# in-cluster S3, a baseline computed in a Job (`berth monitor baseline`), traffic with one feature
# shifted, and the MonitoringSchedule's CronJob (every minute) finding exactly that feature: the
# status, the Drift condition, the DriftDetected Event and the operator's per-feature gauge.
# Runs after e2e-async.sh (the S3 and its Secret), before e2e-test.sh (which uninstalls the chart).
set -euo pipefail
cd "$(dirname "$0")/../.."

NS=berth-demo
URL=http://localhost:8080/endpoints/${NS}/iris-watched/invocations
S3=http://s3.${NS}.svc.cluster.local:5000

step() { echo "::group::$*"; }
end() { echo "::endgroup::"; }
fail() { echo "::error::$*"; exit 1; }

# s3_pod PYTHON: run PYTHON with `s3` (a boto3 client of the in-cluster S3) in a pod; stdin passes.
s3_pod() {
  kubectl -n "$NS" run "s3-$RANDOM" --rm -i --restart=Never --image=ghcr.io/berth-dev/berth-serving:dev \
    --image-pull-policy=IfNotPresent --command -- python -c "
import sys, boto3
s3 = boto3.client('s3', endpoint_url='${S3}', aws_access_key_id='testing',
                  aws_secret_access_key='testing', region_name='us-east-1')
$1"
}

step "The training data and its baseline, in a Job"
python -c "from sklearn.datasets import load_iris; [print(','.join(f'{v:.1f}' for v in r)) for r in load_iris().data]" > /tmp/iris.csv
python -c "from sklearn.datasets import load_iris; [print(','.join(f'{v + (2 if i == 2 else 0):.1f}' for i, v in enumerate(r))) for r in load_iris().data]" > /tmp/shifted.csv
s3_pod "s3.create_bucket(Bucket='berth-monitoring'); print('bucket berth-monitoring made')"
s3_pod "s3.put_object(Bucket='berth-monitoring', Key='train/iris.csv', Body=sys.stdin.buffer.read()); print('dataset uploaded')" < /tmp/iris.csv
kubectl apply -f examples/kind/monitoring.yaml
kubectl -n "$NS" wait --for=condition=complete job/iris-baseline --timeout=5m
kubectl -n "$NS" logs job/iris-baseline
end

step "The capturing Endpoint and its schedule"
kubectl -n "$NS" wait --for=condition=Ready bep/iris-watched --timeout=5m
kubectl -n "$NS" get bep iris-watched
kubectl -n "$NS" get bms iris-watched
cron=$(kubectl -n "$NS" get bms iris-watched -o jsonpath='{.status.cronJobName}')
[[ -n "$cron" ]] || fail "the schedule has no CronJob: $(kubectl -n "$NS" get bms iris-watched -o yaml)"
kubectl -n "$NS" get cronjob "$cron"
end

step "Traffic with the petal length (_c2) moved by 2 cm"
sent=0
while read -r row; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -H 'Content-Type: text/csv' --data "$row" "$URL" || true)
  if [[ "$code" != "200" && $sent -eq 0 ]]; then  # the route may need a moment to reach Envoy
    for _ in $(seq 1 30); do
      sleep 2
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -H 'Content-Type: text/csv' --data "$row" "$URL" || true)
      [[ "$code" == "200" ]] && break
    done
  fi
  [[ "$code" == "200" ]] || fail "request $((sent + 1)) answered ${code}"
  sent=$((sent + 1))
done < /tmp/shifted.csv
echo "${sent} requests answered"
end

step "An execution finds _c2 and nothing else"
deadline=$((SECONDS + 360))
records=0
while ((SECONDS < deadline)); do  # captures are uploaded within 5 s; the CronJob fires each minute
  records=$(kubectl -n "$NS" get bms iris-watched -o jsonpath='{.status.lastExecution.recordsRead}' 2>/dev/null || true)
  ((${records:-0} >= sent)) && break
  sleep 10
done
kubectl -n "$NS" get bms iris-watched -o yaml
((${records:-0} >= sent)) || fail "no execution read the ${sent} captured records (last read: ${records:-none})"
features=$(kubectl -n "$NS" get bms iris-watched -o jsonpath='{.status.lastExecution.violatedFeatures[*]}')
[[ "$features" == "_c2" ]] || fail "violated features: '${features}', expected '_c2'"
drift=$(kubectl -n "$NS" get bms iris-watched -o jsonpath='{.status.conditions[?(@.type=="Drift")].status}')
[[ "$drift" == "True" ]] || fail "Drift is ${drift:-absent}"
kubectl -n "$NS" get events --field-selector reason=DriftDetected,involvedObject.name=iris-watched \
  -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | grep -q "_c2" || fail "no DriftDetected Event naming _c2"
gauges=$(kubectl -n berth-system exec deployment/berth-operator -- python -c \
  'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:8081/metrics").read().decode())')
grep '^berth_monitoring_feature_violated' <<<"$gauges" || true
# Prometheus' text format sorts the labels: endpoint, feature, namespace, schedule.
grep -q "^berth_monitoring_feature_violated{.*feature=\"_c2\".*schedule=\"iris-watched\"} 1.0" <<<"$gauges" \
  || fail "the operator's /metrics has no violated-feature gauge for _c2"
end

step "Clean up"
kubectl -n "$NS" delete monitoringschedule.berth.dev iris-watched --wait=true --timeout=2m
kubectl -n "$NS" delete job iris-baseline
kubectl -n "$NS" delete endpoint.berth.dev iris-watched --wait=true --timeout=2m
kubectl -n "$NS" delete endpointconfig.berth.dev iris-watched-v1
kubectl -n "$NS" delete model.berth.dev iris-watched
end
