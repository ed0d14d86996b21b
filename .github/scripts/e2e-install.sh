#!/usr/bin/env bash
# Install Gateway API, Envoy Gateway and the Berth chart into the current (kind) cluster.
# Expects the images ghcr.io/berth-dev/berth-{operator,serving}:dev loaded into the nodes.
set -euo pipefail
cd "$(dirname "$0")/../.."

GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.3.0}"
ENVOY_GATEWAY_VERSION="${ENVOY_GATEWAY_VERSION:-v1.4.2}"
KEDA_VERSION="${KEDA_VERSION:-2.20.1}"
KEDA_HTTP_VERSION="${KEDA_HTTP_VERSION:-0.15.0}"

step() { echo "::group::$*"; }
end() { echo "::endgroup::"; }

step "Gateway API ${GATEWAY_API_VERSION} standard CRDs"
kubectl apply --server-side -f \
  "https://github.com/kubernetes-sigs/gateway-api/releases/download/${GATEWAY_API_VERSION}/standard-install.yaml"
kubectl wait --for=condition=Established --timeout=60s crd/gateways.gateway.networking.k8s.io crd/httproutes.gateway.networking.k8s.io
end

step "Envoy Gateway ${ENVOY_GATEWAY_VERSION}"
# Helm skips the CRDs that exist already, so the standard-channel Gateway API CRDs stay.
helm upgrade --install eg oci://docker.io/envoyproxy/gateway-helm --version "${ENVOY_GATEWAY_VERSION}" \
  --namespace envoy-gateway-system --create-namespace --wait --timeout 5m
kubectl -n envoy-gateway-system wait --for=condition=Available --timeout=5m deployment/envoy-gateway
kubectl apply -f examples/kind/envoy-gateway.yaml
kubectl wait --for=condition=Accepted --timeout=2m gatewayclass/eg
end

step "KEDA ${KEDA_VERSION} (async variants scale to zero on their queue)"
helm repo add kedacore https://kedacore.github.io/charts --force-update
helm upgrade --install keda kedacore/keda --version "${KEDA_VERSION}" \
  --namespace keda --create-namespace --wait --timeout 5m
kubectl wait --for=condition=Established --timeout=60s crd/scaledobjects.keda.sh
end

step "KEDA HTTP add-on ${KEDA_HTTP_VERSION} (serverless variants: the interceptor holds cold starts)"
helm upgrade --install keda-add-ons-http kedacore/keda-add-ons-http --version "${KEDA_HTTP_VERSION}" \
  --namespace keda --wait --timeout 5m
kubectl wait --for=condition=Established --timeout=60s crd/httpscaledobjects.http.keda.sh
kubectl -n keda get service keda-add-ons-http-interceptor-proxy
end

step "Berth chart"
helm lint charts/berth -f examples/kind/values.yaml --strict
helm upgrade --install berth charts/berth --namespace berth-system --create-namespace \
  -f examples/kind/values.yaml --wait --timeout 5m
kubectl -n berth-system rollout status deployment/berth-operator --timeout=3m
kubectl get crd models.berth.dev endpointconfigs.berth.dev endpoints.berth.dev
end

step "Gateway reachable on localhost:8080"
owner=gateway.envoyproxy.io/owning-gateway-name=berth,gateway.envoyproxy.io/owning-gateway-namespace=berth-system
service=""
deployment=""
# Envoy Gateway creates the proxy Deployment and Service for the Gateway a moment after the
# chart's install: `kubectl wait` on a selector that matches nothing yet fails at once.
for _ in $(seq 1 90); do
  service=$(kubectl -n envoy-gateway-system get service -l "$owner" -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
  deployment=$(kubectl -n envoy-gateway-system get deployment -l "$owner" -o name 2>/dev/null || true)
  [[ -n "$service" && -n "$deployment" ]] && break
  sleep 2
done
[[ -n "$service" && -n "$deployment" ]] || {
  kubectl -n berth-system describe gateway berth
  echo "no Envoy Deployment and Service for the Gateway"
  exit 1
}
kubectl -n envoy-gateway-system wait --for=condition=Available deployment -l "$owner" --timeout=3m
kubectl -n berth-system get gateway berth
node_port=$(kubectl -n envoy-gateway-system get service "$service" -o jsonpath='{.spec.ports[0].nodePort}')
echo "Envoy service ${service}, node port ${node_port}"
if [[ "$node_port" != "30080" ]]; then
  # The EnvoyProxy patch did not apply: reach the Gateway through a port-forward instead.
  echo "node port is not 30080: port-forwarding svc/${service} to localhost:8080"
  nohup kubectl -n envoy-gateway-system port-forward "service/${service}" 8080:80 >/tmp/port-forward.log 2>&1 &
  echo $! >/tmp/port-forward.pid
fi
# No route yet: Envoy answers 404 once it listens.
for _ in $(seq 1 60); do
  code=$(curl -s -o /dev/null -w '%{http_code}' http://localhost:8080/ || true)
  if [[ "$code" == "404" ]]; then echo "gateway answers"; break; fi
  sleep 2
done
[[ "$code" == "404" ]] || { echo "gateway not reachable (last answer: ${code})"; exit 1; }
end
