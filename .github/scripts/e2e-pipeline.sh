#!/usr/bin/env bash
# The inference-pipeline scenario on the kind cluster: examples/pipeline's three ONNX stages as
# one Model. Its answer through the Gateway equals the three raw ONNX Runtime sessions chained by
# hand on this machine; a request that does not fit the first stage is a 400 naming its input;
# each stage's latency is on the pod's /metrics.
# Runs after e2e-async.sh (the model store), before e2e-test.sh (which uninstalls the chart).
set -euo pipefail
cd "$(dirname "$0")/../.."

NS=berth-demo
URL=http://localhost:8080/endpoints/${NS}/risk-pipeline/invocations
BODY='{"instances": [[1.0, 2.0, 3.0, 4.0], [0.5, 5.0, -1.0, 2.5]]}'

step() { echo "::group::$*"; }
end() { echo "::endgroup::"; }
fail() { echo "::error::$*"; exit 1; }

step "The stages in the model store, and the pipeline Endpoint"
python examples/pipeline/build_models.py --out-dir /tmp/berth-pipeline
python examples/quickstart/build_model.py --out-dir /tmp/berth-models
kubectl -n "$NS" create configmap iris-models \
  --from-file=/tmp/berth-models/champion.onnx --from-file=/tmp/berth-models/challenger.onnx \
  --from-file=/tmp/berth-pipeline/scaler.onnx --from-file=/tmp/berth-pipeline/classifier.onnx \
  --from-file=/tmp/berth-pipeline/postprocess.onnx --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" rollout restart deployment/model-store
kubectl -n "$NS" rollout status deployment/model-store --timeout=3m
kubectl apply -f examples/kind/pipeline.yaml
kubectl -n "$NS" wait --for=condition=Ready bep/risk-pipeline --timeout=5m
kubectl -n "$NS" get bep risk-pipeline
kubectl -n "$NS" get model risk-pipeline -o jsonpath='{.status.conditions[?(@.type=="Ready")]}'; echo
end

step "The pipeline answers what its three stages answer by hand"
answer=""
for _ in $(seq 1 30); do  # the route may need a moment to reach Envoy
  code=$(curl -s -o /tmp/pipeline.json -w '%{http_code}' --max-time 30 -H 'Content-Type: application/json' \
    -d "$BODY" "$URL" || true)
  [[ "$code" == "200" ]] && answer=$(cat /tmp/pipeline.json) && break
  sleep 2
done
[[ -n "$answer" ]] || fail "the pipeline answered ${code}: $(cat /tmp/pipeline.json)"
echo "$answer"
python - "$answer" <<'PY'
import json, sys
import numpy as np
import onnxruntime as ort

rows = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 5.0, -1.0, 2.5]], np.float32)
scale, classify, post = (
    ort.InferenceSession(f"/tmp/berth-pipeline/{name}.onnx") for name in ("scaler", "classifier", "postprocess")
)
_, probabilities = classify.run(None, {"x": scale.run(None, {"x": rows})[0]})
confidence, percent = post.run(None, {"probabilities": probabilities})
got = json.loads(sys.argv[1])
got = got.get("outputs", got)
assert np.allclose(got["confidence"], confidence, rtol=1e-5), (got["confidence"], confidence)
assert np.allclose(got["percent"], percent, rtol=1e-5), (got["percent"], percent)
print("equal to the three raw ONNX Runtime sessions chained by hand")
PY
end

step "A request that does not fit the first stage is a 400 naming what it takes"
code=$(curl -s -o /tmp/refused.json -w '%{http_code}' --max-time 30 \
  -H 'Content-Type: application/json' -d '{"instances": [[1.0, 2.0, 3.0, 4.0, 5.0]]}' "$URL" || true)
echo "${code} $(cat /tmp/refused.json)"
[[ "$code" == "400" ]] || fail "five features answered ${code}, expected 400"
grep -q "float32\[N,4\]" /tmp/refused.json || fail "the 400 does not name the input the pipeline takes"
end

step "Each stage's latency on the pod's /metrics"
pod=$(kubectl -n "$NS" get pods -l berth.dev/endpoint=risk-pipeline -o jsonpath='{.items[0].metadata.name}')
metrics=$(kubectl -n "$NS" exec "$pod" -c server -- python -c \
  'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:8080/metrics").read().decode())')
for name in scale classify postprocess; do
  grep -q "^berth_stage_latency_seconds_count{.*stage=\"${name}\".*} [1-9]" <<<"$metrics" \
    || fail "no latency counted for stage ${name}"
done
grep '^berth_stage_latency_seconds_count' <<<"$metrics"
kubectl -n "$NS" delete endpoint.berth.dev risk-pipeline --wait=true --timeout=2m
kubectl -n "$NS" delete endpointconfig.berth.dev risk-pipeline-v1
kubectl -n "$NS" delete model.berth.dev risk-pipeline
end
