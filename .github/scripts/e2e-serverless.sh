#!/usr/bin/env bash
# The serverless scenario on the kind cluster: a serverless variant behind the Gateway, through
# the KEDA HTTP add-on's interceptor. It is InService at zero replicas, a request then is held
# while a replica starts and answered 200, and the variant goes back to zero after idleSeconds.
# Runs after e2e-install.sh (KEDA and its HTTP add-on) and e2e-async.sh (the model store and the
# caller's token), before e2e-test.sh (which uninstalls the chart).
set -euo pipefail
cd "$(dirname "$0")/../.."

NS=berth-demo
URL=http://localhost:8080/endpoints/${NS}/iris-serverless/invocations
BODY='{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
DEPLOYMENT=iris-serverless-iris-serverless-v1-main

step() { echo "::group::$*"; }
end() { echo "::endgroup::"; }
fail() { echo "::error::$*"; exit 1; }

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

step "The serverless Endpoint"
kubectl apply -f examples/kind/models.yaml -f examples/kind/serverless.yaml
kubectl -n "$NS" wait --for=condition=Ready bep/iris-serverless --timeout=5m
kubectl -n "$NS" get bep iris-serverless
kubectl -n "$NS" get httpscaledobject,deployment,httproute -l berth.dev/endpoint=iris-serverless
kubectl -n keda get referencegrant "berth-routes-from-${NS}"
[[ -s /tmp/caller.token ]] || kubectl -n "$NS" create token caller --duration=1h > /tmp/caller.token
AUTH="Authorization: Bearer $(cat /tmp/caller.token)"
end

step "Idle: scaled to zero, still InService"
replicas_become 0 180
phase=$(kubectl -n "$NS" get bep iris-serverless -o jsonpath='{.status.phase}')
[[ "$phase" == "InService" ]] || fail "at zero replicas the Endpoint is ${phase}, not InService"
end

step "A request at zero is held through the cold start and answered"
start=$SECONDS
code=$(curl -s -o /tmp/cold.json -w '%{http_code}' --max-time 200 -H "$AUTH" \
  -H 'Content-Type: application/json' -d "$BODY" "$URL" || true)
[[ "$code" == "200" ]] || fail "the cold request answered ${code}: $(cat /tmp/cold.json)"
echo "answered 200 after $((SECONDS - start)) s: $(cat /tmp/cold.json)"
replicas_become 1 30
end

step "Warm requests, then back to zero after idleSeconds"
for i in $(seq 1 20); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" -H 'Content-Type: application/json' -d "$BODY" "$URL")
  [[ "$code" == "200" ]] || fail "warm request ${i} answered ${code}"
done
replicas_become 0 240
kubectl -n "$NS" delete endpoint.berth.dev iris-serverless --wait=true --timeout=2m
kubectl -n "$NS" delete endpointconfig.berth.dev iris-serverless-v1
end
