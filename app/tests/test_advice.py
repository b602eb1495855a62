"""tpserve.tools.advice: the layout advice serve.yml prints, for the reference cluster's shapes."""

from tpserve.tools.advice import advise

QWEN_7B = {"num_hidden_layers": 28, "hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
           "intermediate_size": 18944, "vocab_size": 152064, "max_position_embeddings": 32768}  # fmt: skip
QWEN_14B = QWEN_7B | {"num_hidden_layers": 48, "hidden_size": 5120, "num_attention_heads": 40,
                      "num_key_value_heads": 8, "intermediate_size": 13824}  # fmt: skip
A10_GIB = 22.49


def test_7b_on_a10s_across_nodes_is_told_to_use_replicas() -> None:
    out = advise(QWEN_7B, "tp_across_nodes", 4, 4, A10_GIB, latency_ms=0.3, gbps=1.2)
    assert out["fits_one_gpu"] is True and out["min_tp"] == 1
    text = " ".join(out["advice"])
    assert "tpserve_layout=replicas" in text and "4.3x the throughput" in text
    assert "56 all-reduces" in text and "at least 16.8 ms per token" in text


def test_14b_needs_tp2_on_a10s() -> None:
    out = advise(QWEN_14B, "tp_across_nodes", 2, 2, A10_GIB)
    assert out["fits_one_gpu"] is False and out["min_tp"] == 2
    assert "needs TP >= 2" in out["advice"][0] and "configured: TP=2" in out["advice"][0]
    assert "too small" in advise(QWEN_14B, "replicas", 1, 4, A10_GIB)["advice"][0]


def test_cpu_cluster_without_gpu_memory_gets_network_advice_only() -> None:
    out = advise(QWEN_7B, "tp_across_nodes", 2, 2)
    assert out["fits_one_gpu"] is None and len(out["advice"]) == 1
    assert advise(QWEN_7B, "replicas", 1, 4)["advice"] == []
