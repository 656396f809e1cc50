"""The tour runs end to end and reports agreement with numpy and JAX."""
from workbench.cli import main


def test_tour_runs_and_agrees(capsys):
    assert main(["tour"]) == 0
    out = capsys.readouterr().out
    for title in ("blocked matrix multiply", "transpose", "GCN layer", "RJP vs jax.vjp",
                  "karate club", "Les Misérables", "TransE (1-n) on nations", "DistMult (1-n) on nations"):
        assert title in out
    assert "MISMATCH" not in out and " NO" not in out
