import anomaly_vae


def test_all_is_honest():
    assert sorted(anomaly_vae.__all__) == sorted(set(anomaly_vae.__all__))
    for name in anomaly_vae.__all__:
        assert hasattr(anomaly_vae, name), name
    public = {n for n in dir(anomaly_vae) if not n.startswith("_") and not isinstance(getattr(anomaly_vae, n), type(anomaly_vae))}
    assert public <= set(anomaly_vae.__all__)


def test_cli_choices_match_the_core():
    from anomaly_vae import cli, objectives, scoring

    assert cli.LIKELIHOODS == objectives.LIKELIHOODS and cli.SCORES == scoring.SCORES


def test_importing_the_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, anomaly_vae, anomaly_vae.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
