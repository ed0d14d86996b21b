#!/usr/bin/env bash
# The real-cluster scenario: serve the quickstart models, invoke through the Gateway, move the
# Endpoint to a new EndpointConfig under constant load with zero failed requests, delete
# everything and check that nothing is left behind.
set -euo pipefail
cd "$(dirname "$0")/../.."

NS=berth-demo
URL=http://localhost:8080/endpoints/${NS}/iris/invocations
BODY='{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
CHILDREN=deployments,services,horizontalpodautoscalers,poddisruptionbudgets,httproutes,networkpolicies

step() { echo "::group::$*"; }
end() { echo "::endgroup::"; }
fail() { echo "::error::$*"; exit 1; }

# Wait until a jsonpath of the Endpoint has a value: wait_for JSONPATH VALUE TIMEOUT_SECONDS
wait_for() {
  local deadline=$((SECONDS + $3)) value=""
  while ((SECONDS < deadline)); do
    value=$(kubectl -n "$NS" get endpoints.berth.dev iris -o jsonpath="$1" 2>/dev/null || true)
    [[ "$value" == "$2" ]] && return 0
    sleep 2
  done
  fail "endpoint iris: $1 is '${value}', expected '$2' after $3 s"
}

# Wait until a command lists nothing: wait_none WHAT TIMEOUT_SECONDS COMMAND...
wait_none() {
  local what=$1 deadline=$((SECONDS + $2)) left=""
  shift 2
  while ((SECONDS < deadline)); do
    left=$("$@" 2>/dev/null || echo "(command failed)")
    [[ -z "$left" ]] && return 0
    sleep 2
  done
  fail "${what} still there after the wait: ${left}"
}

step "Model store (quickstart models in a ConfigMap)"
python examples/quickstart/build_model.py --out-dir /tmp/berth-models
kubectl apply -f examples/kind/namespace.yaml
kubectl -n "$NS" create configmap iris-models \
  --from-file=/tmp/berth-models/champion.onnx --from-file=/tmp/berth-models/challenger.onnx \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f examples/kind/model-store.yaml
kubectl -n "$NS" rollout status deployment/model-store --timeout=3m
end

step "Endpoint on iris-config-v1"
kubectl apply -f examples/kind/models.yaml -f examples/kind/endpoint-config-v1.yaml -f examples/kind/endpoint-config-v2.yaml
kubectl apply -f examples/kind/endpoint.yaml
kubectl -n "$NS" wait --for=condition=Ready bep/iris --timeout=5m
kubectl get berth -n "$NS"
[[ "$(kubectl -n "$NS" get bep iris -o jsonpath='{.status.phase}')" == "InService" ]] || fail "not InService"
[[ "$(kubectl -n "$NS" get bep iris -o jsonpath='{.status.url}')" == "$URL" ]] || fail "unexpected status.url"
end

step "Invoke through the Gateway (closed by default: a caller's token)"
kubectl apply -f examples/kind/caller.yaml
kubectl -n "$NS" create token caller --duration=2h > /tmp/caller.token
AUTH="Authorization: Bearer $(cat /tmp/caller.token)"
# The route may need a moment to reach Envoy after Ready.
for _ in $(seq 1 30); do
  code=$(curl -s -o /tmp/answer.json -w '%{http_code}' -H "$AUTH" -H 'Content-Type: application/json' \
    -d "$BODY" "$URL" || true)
  [[ "$code" == "200" ]] && break
  sleep 2
done
[[ "$code" == "200" ]] || fail "invocation answered ${code}: $(cat /tmp/answer.json)"
cat /tmp/answer.json; echo
# Without a token, or with one of a user who may not invoke: refused by the serving pod.
code=$(curl -s -o /tmp/refused.json -w '%{http_code}' -H 'Content-Type: application/json' -d "$BODY" "$URL")
[[ "$code" == "401" ]] || fail "no token answered ${code}, expected 401: $(cat /tmp/refused.json)"
kubectl -n "$NS" create serviceaccount stranger --dry-run=client -o yaml | kubectl apply -f -
code=$(curl -s -o /tmp/refused.json -w '%{http_code}' -H 'Content-Type: application/json' -d "$BODY" \
  -H "Authorization: Bearer $(kubectl -n "$NS" create token stranger)" "$URL")
[[ "$code" == "403" ]] || fail "a stranger's token answered ${code}, expected 403: $(cat /tmp/refused.json)"
berth invoke iris -n "$NS" --url http://localhost:8080 --token "$(cat /tmp/caller.token)" -d "$BODY"
variant=$(curl -s -D - -o /dev/null -H "$AUTH" -H 'Content-Type: application/json' -d "$BODY" "$URL" | tr -d '\r' \
  | awk -F': ' 'tolower($1) == "x-berth-variant" {print $2}')
[[ "$variant" == "champion" ]] || fail "X-Berth-Variant is '${variant}', expected champion"
end

step "Move to iris-config-v2 under constant load"
rm -f /tmp/stop-load
python .github/scripts/constant_load.py --url "$URL" --stop-file /tmp/stop-load --summary /tmp/load.json \
  --workers 4 --token-file /tmp/caller.token &
load_pid=$!
sleep 5
kubectl -n "$NS" patch bep iris --type merge -p '{"spec":{"endpointConfigName":"iris-config-v2"}}'
wait_for '{.status.pendingEndpointConfigName}' iris-config-v2 120
kubectl get berth -n "$NS"
wait_for '{.status.endpointConfigName}' iris-config-v2 600
wait_for '{.status.pendingEndpointConfigName}' '' 300
wait_for '{.status.phase}' InService 300
kubectl -n "$NS" wait --for=condition=Ready bep/iris --timeout=2m
sleep 5  # a few more seconds of load on the new fleet alone
touch /tmp/stop-load
wait "$load_pid" || fail "requests failed during the update: $(cat /tmp/load.json)"
python - <<'PY'
import json
summary = json.load(open("/tmp/load.json"))
assert summary["failed"] == 0, summary
assert summary["requests"] >= 50, summary
assert summary["variants"].get("challenger", 0) > 0, f"the new config never answered: {summary}"
print(f"{summary['requests']} requests in {summary['seconds']} s, none failed; variants {summary['variants']}")
PY
# The old fleet goes once the rollout is done.
wait_none "old fleet" 60 kubectl -n "$NS" get deployments,services \
  -l berth.dev/endpoint=iris,berth.dev/endpoint-config=iris-config-v1 -o name
end

step "Delete and check that nothing is left"
kubectl -n "$NS" delete bep iris --wait --timeout=3m
wait_none "children of the deleted Endpoint" 120 kubectl -n "$NS" get "$CHILDREN" -l berth.dev/endpoint=iris -o name
wait_none "serving pods" 120 kubectl -n "$NS" get pods -l berth.dev/endpoint=iris -o name
kubectl delete -f examples/kind/endpoint-config-v2.yaml -f examples/kind/endpoint-config-v1.yaml \
  -f examples/kind/models.yaml --wait --timeout=2m
[[ -z "$(kubectl -n "$NS" get berth -o name)" ]] || fail "Berth objects left: $(kubectl -n "$NS" get berth -o name)"
for _ in $(seq 1 15); do  # Envoy drops the route a moment after the HTTPRoute goes
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" -H 'Content-Type: application/json' -d "$BODY" "$URL" || true)
  [[ "$code" == "404" ]] && break
  sleep 2
done
[[ "$code" == "404" ]] || fail "the route still answers ${code} after deletion"
end

step "Uninstall the chart: the operator goes, the CRDs stay"
helm uninstall berth --namespace berth-system --wait --timeout 3m
kubectl -n berth-system wait --for=delete deployment/berth-operator --timeout=2m || true
[[ -z "$(kubectl -n berth-system get deployment -o name)" ]] || fail "operator Deployment left after uninstall"
[[ -z "$(kubectl get clusterrole,clusterrolebinding -l app.kubernetes.io/instance=berth -o name)" ]] || \
  fail "cluster RBAC left after uninstall"
kubectl get crd endpoints.berth.dev >/dev/null || fail "CRDs must stay after helm uninstall"
echo "e2e passed"
end
