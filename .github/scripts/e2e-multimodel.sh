#!/usr/bin/env bash
# The multi-model scenario on the kind cluster: one Endpoint serving both quickstart models from
# the model store's prefix. Each model answers its own numbers when named in X-Berth-Target-Model
# (a miss, then hits), an unknown one is a 404 naming the prefix, and each model is loaded by
# exactly one of the two replicas, whichever replica the Service sent a request to.
# Runs after e2e-async.sh (the model store and the caller's token), before e2e-test.sh (which
# uninstalls the chart).
set -euo pipefail
cd "$(dirname "$0")/../.."

NS=berth-demo
URL=http://localhost:8080/endpoints/${NS}/iris-many/invocations
BODY='{"instances": [[5.1, 3.5, 1.4, 0.2]]}'

step() { echo "::group::$*"; }
end() { echo "::endgroup::"; }
fail() { echo "::error::$*"; exit 1; }

step "The multi-model Endpoint"
kubectl apply -f examples/kind/multimodel.yaml
kubectl -n "$NS" wait --for=condition=Ready bep/iris-many --timeout=5m
kubectl -n "$NS" get bep iris-many
kubectl -n "$NS" get deployment,service,httproute -l berth.dev/endpoint=iris-many
[[ -s /tmp/caller.token ]] || kubectl -n "$NS" create token caller --duration=1h > /tmp/caller.token
AUTH="Authorization: Bearer $(cat /tmp/caller.token)"
end

# invoke MODEL: prints "CODE CACHE BODY"
invoke() {
  local headers body code
  headers=$(mktemp)
  body=$(curl -s -D "$headers" -o - -w '\n%{http_code}' --max-time 60 -H "$AUTH" \
    -H 'Content-Type: application/json' -H "X-Berth-Target-Model: $1" -d "$BODY" "$URL" || true)
  code=$(tail -n1 <<<"$body")
  cache=$(grep -i '^x-berth-model-cache:' "$headers" | tr -d '\r' | awk '{print $2}' || true)
  rm -f "$headers"
  echo "$code ${cache:-none} $(head -n -1 <<<"$body")"
}

step "Each model answers its own numbers: a miss, then hits"
first=$(invoke champion.onnx)
echo "champion: $first"
[[ "$first" == "200 miss "* ]] || fail "the first champion request: $first"
for i in $(seq 1 10); do
  again=$(invoke champion.onnx)
  [[ "$again" == "200 hit "* ]] || fail "champion request ${i} after the first: $again"
done
other=$(invoke challenger.onnx)
echo "challenger: $other"
[[ "$other" == "200 "* ]] || fail "the challenger request: $other"
[[ "${first#* * }" != "${other#* * }" ]] || fail "champion and challenger gave the same answer"
unknown=$(invoke nothing-here.onnx)
[[ "$unknown" == "404 "*"model-store"* ]] || fail "an unknown model: $unknown"
end

step "Each model is loaded by exactly one replica"
mapfile -t pods < <(kubectl -n "$NS" get pods -l berth.dev/endpoint=iris-many \
  -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
((${#pods[@]} == 2)) || fail "expected 2 replicas, found ${#pods[@]}"
for model in champion challenger; do
  holders=0
  for pod in "${pods[@]}"; do
    held=$(kubectl -n "$NS" exec "$pod" -c server -- python -c \
      'import json, urllib.request; print(" ".join(m["key"] for m in json.load(urllib.request.urlopen("http://127.0.0.1:8080/models"))["models"]))')
    echo "${pod} holds: ${held}"
    [[ " ${held} " == *" ${model} "* ]] && holders=$((holders + 1))
  done
  ((holders == 1)) || fail "${model} is loaded by ${holders} replicas, expected exactly 1"
done
kubectl -n "$NS" delete endpoint.berth.dev iris-many --wait=true --timeout=2m
kubectl -n "$NS" delete endpointconfig.berth.dev iris-many-v1
kubectl -n "$NS" delete model.berth.dev iris-many
end
