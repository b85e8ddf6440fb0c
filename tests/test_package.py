import anomaly_vae


def test_all_is_honest():
    assert sorted(anomaly_vae.__all__) == sorted(set(anomaly_vae.__all__))
    for name in anomaly_vae.__all__:
        assert hasattr(anomaly_vae, name), name
    public = {n for n in dir(anomaly_vae) if not n.startswith("_") and not isinstance(getattr(anomaly_vae, n), type(anomaly_vae))}
    assert public <= set(anomaly_vae.__all__)
