#!/usr/bin/env bash
# The async scenario on the kind cluster: an async Endpoint behind the Gateway, answers in S3
# (moto's server in the cluster), the chart's Valkey as the queue, KEDA scaling the fleet to zero
# and back. Runs after e2e-install.sh (which installs KEDA) and before e2e-test.sh (which ends
# by uninstalling the chart).
set -euo pipefail
cd "$(dirname "$0")/../.."

NS=berth-demo
BASE=http://localhost:8080/endpoints/${NS}/iris-async
BODY='{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
DEPLOYMENT=iris-async-iris-async-v1-main

step() { echo "::group::$*"; }
end() { echo "::endgroup::"; }
fail() { echo "::error::$*"; exit 1; }

# poll_state ID TIMEOUT_SECONDS: until the inference is Succeeded or Failed; prints the state.
poll_state() {
  local deadline=$((SECONDS + $2)) state=""
  while ((SECONDS < deadline)); do
    state=$(curl -s -H "$AUTH" "${BASE}/async-invocations/$1" \
      | python -c 'import json, sys; print(json.load(sys.stdin).get("state", ""))' 2>/dev/null || true)
    if [[ "$state" == "Succeeded" || "$state" == "Failed" ]]; then echo "$state"; return 0; fi
    sleep 1
  done
  echo "${state:-unknown}"
}

# replicas_become N TIMEOUT_SECONDS: until the variant's Deployment asks for N replicas.
replicas_become() {
  local deadline=$((SECONDS + $2)) value=""
  while ((SECONDS < deadline)); do
    value=$(kubectl -n "$NS" get deployment "$DEPLOYMENT" -o jsonpath='{.spec.replicas}' 2>/dev/null || true)
    [[ "$value" == "$1" ]] && return 0
    sleep 2
  done
  fail "deployment ${DEPLOYMENT} has ${value:-no} replicas, expected $1 after $2 s"
}

step "Model store, S3 and the async Endpoint"
python examples/quickstart/build_model.py --out-dir /tmp/berth-models
kubectl apply -f examples/kind/namespace.yaml
kubectl -n "$NS" create configmap iris-models \
  --from-file=/tmp/berth-models/champion.onnx --from-file=/tmp/berth-models/challenger.onnx \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f examples/kind/model-store.yaml -f examples/kind/caller.yaml -f examples/kind/async.yaml
kubectl -n "$NS" rollout status deployment/model-store --timeout=3m
kubectl -n "$NS" rollout status deployment/s3 --timeout=5m
kubectl -n "$NS" run make-bucket --rm -i --restart=Never --image=ghcr.io/berth-dev/berth-serving:dev \
  --image-pull-policy=IfNotPresent --command -- python -c "
import boto3
s3 = boto3.client('s3', endpoint_url='http://s3.${NS}.svc.cluster.local:5000', aws_access_key_id='testing',
                  aws_secret_access_key='testing', region_name='us-east-1')
s3.create_bucket(Bucket='berth-async')
print('bucket berth-async made')"
kubectl -n "$NS" wait --for=condition=Ready bep/iris-async --timeout=5m
kubectl -n "$NS" get bep iris-async
kubectl -n "$NS" get scaledobject,deployment,configmap -l berth.dev/endpoint=iris-async
kubectl -n "$NS" create token caller --duration=1h > /tmp/caller.token
AUTH="Authorization: Bearer $(cat /tmp/caller.token)"
end

step "Queue through the Gateway: 202 at once, the answer in S3"
code=""
for _ in $(seq 1 30); do  # the front door's route may need a moment to reach Envoy
  code=$(curl -s -o /tmp/queued.json -w '%{http_code}' -H "$AUTH" -H 'Content-Type: application/json' \
    -H 'X-Berth-Inference-Id: e2e-1' -d "$BODY" "${BASE}/async-invocations" || true)
  [[ "$code" == "202" ]] && break
  sleep 2
done
[[ "$code" == "202" ]] || fail "async invocation answered ${code}: $(cat /tmp/queued.json)"
cat /tmp/queued.json; echo
state=$(poll_state e2e-1 300)
[[ "$state" == "Succeeded" ]] || fail "e2e-1 is ${state}: $(curl -s -H "$AUTH" "${BASE}/async-invocations/e2e-1")"
# The same id again is queued once: the same locations, no new message.
code=$(curl -s -o /tmp/again.json -w '%{http_code}' -H "$AUTH" -H 'Content-Type: application/json' \
  -H 'X-Berth-Inference-Id: e2e-1' -d "$BODY" "${BASE}/async-invocations")
[[ "$code" == "202" ]] || fail "a repeated id answered ${code}"
# A request the model refuses (two features, not four) goes to the failure path with the reason.
curl -s -o /dev/null -H "$AUTH" -H 'Content-Type: application/json' -H 'X-Berth-Inference-Id: e2e-bad' \
  -d '{"instances": [[1, 2]]}' "${BASE}/async-invocations"
state=$(poll_state e2e-bad 120)
[[ "$state" == "Failed" ]] || fail "e2e-bad is ${state}, expected Failed"
curl -s -H "$AUTH" "${BASE}/async-invocations/e2e-bad"; echo
# Closed by default: no token is a 401 at the front door.
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -d "$BODY" "${BASE}/async-invocations")
[[ "$code" == "401" ]] || fail "no token answered ${code}, expected 401"
end

step "Scale to zero when idle, and back to one for a message"
replicas_become 0 240
started=$SECONDS
curl -s -o /dev/null -H "$AUTH" -H 'Content-Type: application/json' -H 'X-Berth-Inference-Id: e2e-cold' \
  -d "$BODY" "${BASE}/async-invocations"
state=$(poll_state e2e-cold 300)
[[ "$state" == "Succeeded" ]] || fail "e2e-cold is ${state}"
echo "answered from zero replicas in $((SECONDS - started)) s"
kubectl -n "$NS" get bep iris-async -o jsonpath='{.status.productionVariants}'; echo
end

step "Delete the async Endpoint: its front door and routes go too"
kubectl -n "$NS" delete -f examples/kind/async.yaml --wait --timeout=3m
deadline=$((SECONDS + 120))
while ((SECONDS < deadline)); do
  left=$(kubectl -n "$NS" get deployments,services,configmaps,scaledobjects -l berth.dev/endpoint=iris-async -o name)
  [[ -z "$left" ]] && break
  sleep 2
done
[[ -z "$left" ]] || fail "children of the async Endpoint left: ${left}"
echo "async e2e passed"
end
