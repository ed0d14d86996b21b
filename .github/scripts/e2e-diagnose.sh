#!/usr/bin/env bash
# Dump what explains a failed e2e run (never fails itself).
set +e
section() { echo "::group::$*"; }
end() { echo "::endgroup::"; }
section "Berth objects"; kubectl get berth -A -o yaml; end
section "Children"; kubectl get deploy,rs,pods,svc,hpa,pdb,httproute -A -l app.kubernetes.io/part-of=berth -o wide; end
section "Pods (all)"; kubectl get pods -A -o wide; end
section "Events"; kubectl get events -A --sort-by=.lastTimestamp | tail -100; end
section "Operator logs"; kubectl -n berth-system logs deployment/berth-operator --all-containers --tail=500; end
section "Serving pods"
for pod in $(kubectl -n berth-demo get pods -o name); do
  echo "--- ${pod}"; kubectl -n berth-demo describe "$pod" | tail -30
  kubectl -n berth-demo logs "$pod" --all-containers --tail=100
done
end
section "Gateway"; kubectl get gateway,httproute -A -o yaml; kubectl -n envoy-gateway-system get all; end
section "Async: KEDA, the queue, ScaledObjects"
kubectl get scaledobjects -A -o yaml; kubectl -n keda logs deployment/keda-operator --tail=100
kubectl -n berth-system logs -l berth.dev/component=async-queue --tail=50
end
section "Load summary"; cat /tmp/load.json; end
section "Port-forward log"; cat /tmp/port-forward.log; end
exit 0
