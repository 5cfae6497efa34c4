"""Replications on the real server: two teams' independent ``distill-kit run smoke-kd`` CPU runs (scaled down as in
tests/test_e2e.py, the same settings for both, so the same resolved manifest) are grouped as replications of one
manifest, with their spread in energy and quality, and each marked ``replicated``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from test_e2e import QUICK
from test_leaderboard import AUTH, Server

from distill_kit.bundle.keys import generate_keypair

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_teams_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """team -> (bundle, public key): two smoke-kd runs made side by side, each bundled and signed by its team."""
    root = tmp_path_factory.mktemp("replications")
    runs = {team: root / team for team in ("team-north", "team-south")}
    procs = [subprocess.Popen([sys.executable, "-m", "distill_kit", "run", "smoke-kd", "--run-dir", str(run),
                               "--runtime", "local", *QUICK], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for run in runs.values()]
    for proc in procs:
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, output[-3000:]
    out = {}
    for team, run in runs.items():
        pair = generate_keypair(root / f"{team}-key")
        bundle = root / f"{team}.tar"
        result = run_cli("bundle", str(run), "--out", str(bundle), "--key", str(pair.private_path))
        assert result.returncode == 0, result.output
        out[team] = (bundle, pair.public_path)
    return out


def test_two_teams_runs_are_replications(two_teams_runs: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    server = Server(f"sqlite:///{tmp_path / 'board.db'}", tmp_path / "data", ["--max-upload-mb", "64"]).start()
    try:
        shas = {}
        for team, (bundle, pub) in two_teams_runs.items():
            key = server.post("/api/admin/keys", headers=AUTH, json={"team": team, "public_key_pem": pub.read_text()})
            assert key.status_code == 201, key.text
            response = server.submit(bundle.read_bytes())
            assert response.status_code == 201, response.text[:2000]
            shas[team] = response.json()["bundle_sha256"]
        groups = server.get("/api/replications").json()
        assert groups["count"] == 1
        group = groups["groups"][0]
        assert group["teams"] == ["team-north", "team-south"] and len(group["entries"]) == 2
        energies = [e["total_energy_j"] for e in group["entries"]]
        assert group["energy"]["min_j"] == min(energies) and group["energy"]["max_j"] == max(energies)
        assert group["energy"]["relative_spread"] == pytest.approx(
            (max(energies) - min(energies)) / ((max(energies) + min(energies)) / 2))
        assert [q["task"] for q in group["quality"]] == ["tiny_task"]
        assert all(e["quality"]["tiny_task"]["n"] == 50 and e["energy_uncertainty_j"] > 0 for e in group["entries"])
        assert all(e["replicated"] for e in group["entries"]), group
        north = server.get(f"/api/entries/{shas['team-north']}").json()
        assert north["replications"]["manifest_sha256"] == group["manifest_sha256"]
        assert shas["team-south"] in next(e for e in north["replications"]["entries"]
                                          if e["team"] == "team-north")["agrees_with"]
        print(f"\nreplications: energies {', '.join(f'{e:.0f}' for e in energies)} J (spread "
              f"{group['energy']['relative_spread']:.1%}); tiny_task {group['quality'][0]}")
    finally:
        server.stop()
