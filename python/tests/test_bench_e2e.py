"""`kvtier bench e2e` runs end to end on a tiny model and writes the points file the
offload-versus-recompute benchmark reads."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from kvtier import bench_e2e  # noqa: E402


@pytest.mark.parametrize("tier", ["host", "nvme"])
def test_bench_e2e_smoke(tmp_path, disk_dir, tier, capsys):
    out = tmp_path / "points.json"
    args = ["--lengths", "192,320", "--tail", "64", "--chunk-tokens", "64", "--reps", "1", "--layers", "1",
            "--hidden", "64", "--heads", "2", "--kv-heads", "1", "--intermediate", "128", "--vocab", "256",
            "--tier", tier, "--nvme-dir", disk_dir, "--out", str(out), "--json"]
    assert bench_e2e.main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed == written
    assert written["engine"] == "transformers-cpu" and written["tier"] == tier
    assert written["model"]["layers"] == 1 and written["model"]["params"] > 0
    assert [p["tokens"] for p in written["points"]] == [192, 320]
    for p in written["points"]:
        assert p["cached_tokens"] == p["tokens"] - 64 and p["tail_tokens"] == 64
        for key in ("prefill_s", "load_s", "ttft_cached_s", "ttft_full_s", "tail_prefill_s"):
            assert p[key] > 0
        assert p["share_of_ideal"] == pytest.approx(p["achieved_speedup"] / p["ideal_speedup"])
        if tier == "nvme":
            assert p["nvme_promoted_chunks"] == p["cached_tokens"] // 64
