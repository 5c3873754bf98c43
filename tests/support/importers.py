"""What the importers' tests scrape: vLLM- and Kueue-shaped counters, and the work units and queues read from them.

Shared by tests/analytics/test_work_units.py, test_queues.py and
test_imports_lake.py (the same imports into the lake).
"""

from __future__ import annotations

from gpuledger.analytics import queues as qu
from gpuledger.analytics import work_units as wu

UNITS = wu.parse_work_units("""
[[unit]]
name = "tokens"
per = 1000000
query = '''sum by (namespace, pod) (last_over_time(vllm:prompt_tokens_total[1h])
         + last_over_time(vllm:generation_tokens_total[1h]))'''
[[unit]]
name = "output_tokens"
per = 1000000
query = 'sum by (namespace, pod) (last_over_time(vllm:generation_tokens_total[1h]))'
""")
#: llm-0 served 500k prompt + 1.5M generated tokens; llm-1 has no prompt counter (its "tokens" series is absent).
VLLM_METRICS = """# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="llama",engine="0",namespace="inf",pod="llm-0"} 500000
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="llama",engine="0",namespace="inf",pod="llm-0"} 1500000
vllm:generation_tokens_total{model_name="llama",engine="0",namespace="inf",pod="llm-1"} 7000
"""
G = 'resource="nvidia.com/gpu"'
#: cq-ml: quota 4 + 2 GPUs (two flavors), 7 admitted (1 borrowed), 5 in use; cq-cv: quota 4, 1 admitted (3 unused);
#: a CPU quota that must not count; cq-ml's admission waits: 2 under 1 s, 4 in (1, 10], 4 in (10, 100].
KUEUE_METRICS = f"""# TYPE kueue_cluster_queue_nominal_quota gauge
kueue_cluster_queue_nominal_quota{{cohort="all",cluster_queue="cq-ml",flavor="h100",{G}}} 4
kueue_cluster_queue_nominal_quota{{cohort="all",cluster_queue="cq-ml",flavor="a100",{G}}} 2
kueue_cluster_queue_nominal_quota{{cohort="all",cluster_queue="cq-cv",flavor="h100",{G}}} 4
kueue_cluster_queue_nominal_quota{{cohort="all",cluster_queue="cq-cv",flavor="cpu",resource="cpu"}} 64
# TYPE kueue_cluster_queue_borrowing_limit gauge
kueue_cluster_queue_borrowing_limit{{cohort="all",cluster_queue="cq-ml",flavor="h100",{G}}} 2
# TYPE kueue_cluster_queue_resource_reservation gauge
kueue_cluster_queue_resource_reservation{{cohort="all",cluster_queue="cq-ml",flavor="h100",{G}}} 7
kueue_cluster_queue_resource_reservation{{cohort="all",cluster_queue="cq-cv",flavor="h100",{G}}} 1
# TYPE kueue_cluster_queue_resource_usage gauge
kueue_cluster_queue_resource_usage{{cohort="all",cluster_queue="cq-ml",flavor="h100",{G}}} 5
# TYPE kueue_admission_wait_time_seconds histogram
kueue_admission_wait_time_seconds_bucket{{cluster_queue="cq-ml",le="1"}} 2
kueue_admission_wait_time_seconds_bucket{{cluster_queue="cq-ml",le="10"}} 6
kueue_admission_wait_time_seconds_bucket{{cluster_queue="cq-ml",le="100"}} 10
kueue_admission_wait_time_seconds_bucket{{cluster_queue="cq-ml",le="+Inf"}} 10
kueue_admission_wait_time_seconds_sum{{cluster_queue="cq-ml"}} 300
kueue_admission_wait_time_seconds_count{{cluster_queue="cq-ml"}} 10
# TYPE kueue_local_queue_resource_reservation gauge
kueue_local_queue_resource_reservation{{name="main",namespace="ml-a",flavor="h100",{G}}} 5
kueue_local_queue_resource_reservation{{name="main",namespace="ml-b",flavor="h100",{G}}} 2
kueue_local_queue_resource_reservation{{name="main",namespace="ml-b",flavor="cpu",resource="cpu"}} 32
kueue_local_queue_resource_reservation{{name="stray",namespace="x",flavor="h100",{G}}} 1
# TYPE kueue_local_queue_resource_usage gauge
kueue_local_queue_resource_usage{{name="main",namespace="ml-a",flavor="h100",{G}}} 4
"""
#: cq-ml's LocalQueues: ml-a/main (5 of the 7 admitted GPUs; tenant ml) and ml-b/main (2; tenant: its namespace);
#: x/stray is not configured (its ClusterQueue is unknown).
QUEUES = qu.parse_queues('[[queue]]\ncluster_queue = "cq-ml"\ntenant = "ml"\n'
                         '[[local_queue]]\nnamespace = "ml-a"\nname = "main"\ncluster_queue = "cq-ml"\ntenant = "ml"\n'
                         '[[local_queue]]\nnamespace = "ml-b"\nname = "main"\ncluster_queue = "cq-ml"\n')

