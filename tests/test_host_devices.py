"""host_devices.configure_cpu_devices: the XLA_FLAGS entry it adds, and when it leaves them alone."""
import pytest

from sslsteal_jax.host_devices import DEVICE_COUNT_FLAG, configure_cpu_devices


def test_one_device_per_core_capped(monkeypatch):
    import sslsteal_jax.host_devices as hd
    monkeypatch.setattr(hd, "_backends_initialised", lambda: False)
    new = (0, 10)
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    assert configure_cpu_devices(env, cores=2, jaxlib_version=new) == 2
    flags = env["XLA_FLAGS"].split()
    assert flags[:2] == ["--xla_cpu_enable_fast_math=false", f"{DEVICE_COUNT_FLAG}=2"]
    # the collective waits are raised so a slow core cannot abort the run
    assert "--xla_cpu_collective_call_terminate_timeout_seconds=3600" in flags
    env = {}
    assert configure_cpu_devices(env, cores=64, jaxlib_version=new) == 8
    assert env["XLA_FLAGS"].split()[0] == f"{DEVICE_COUNT_FLAG}=8"
    # a power of two, so it divides every batch size (3, 5, 6, 7 cores -> 2, 4, 4, 4)
    assert [hd.auto_device_count(c) for c in (1, 2, 3, 5, 6, 7, 8, 12)] == [1, 2, 2, 4, 4, 4, 8, 8]
    env = {"SSLSTEAL_CPU_DEVICES": "3"}
    assert configure_cpu_devices(env, cores=2, jaxlib_version=new) == 3
    assert f"{DEVICE_COUNT_FLAG}=3" in env["XLA_FLAGS"]
    # an old jaxlib may not know the timeout flags (unknown flags are fatal): no automatic split,
    # an explicit count is honoured without them
    env = {}
    assert configure_cpu_devices(env, cores=2, jaxlib_version=(0, 4)) is None and env == {}
    env = {"SSLSTEAL_CPU_DEVICES": "2"}
    assert configure_cpu_devices(env, cores=2, jaxlib_version=(0, 4)) == 2
    assert env["XLA_FLAGS"] == f"{DEVICE_COUNT_FLAG}=2"


@pytest.mark.parametrize("env", [
    {"SSLSTEAL_CPU_DEVICES": "1"},                                # explicitly one device
    {"XLA_FLAGS": f"{DEVICE_COUNT_FLAG}=8"},                      # the user's own count wins
    {"SSLSTEAL_DISTRIBUTED": "1"},                                # multi-host run
])
def test_left_alone(env, monkeypatch):
    import sslsteal_jax.host_devices as hd
    monkeypatch.setattr(hd, "_backends_initialised", lambda: False)
    before = dict(env)
    assert configure_cpu_devices(env, cores=4, jaxlib_version=(0, 10)) is None
    assert env == before
    assert configure_cpu_devices({}, cores=1) is None


def test_too_late_once_jax_started():
    import jax
    jax.devices()  # the test process's backend is up (8 forced devices from conftest)
    env = {}
    assert configure_cpu_devices(env, cores=2) is None and env == {}


def test_bad_value_named():
    with pytest.raises(ValueError, match="SSLSTEAL_CPU_DEVICES='0'"):
        configure_cpu_devices({"SSLSTEAL_CPU_DEVICES": "0"}, cores=2)
    with pytest.raises(ValueError, match="SSLSTEAL_CPU_DEVICES='two'"):
        configure_cpu_devices({"SSLSTEAL_CPU_DEVICES": "two"}, cores=2)


def test_multi_host_honours_an_explicit_count(monkeypatch):
    """local.sh --processes=N gives each process SSLSTEAL_CPU_DEVICES devices; without it a
    multi-host process gets no automatic split."""
    import sslsteal_jax.host_devices as hd
    monkeypatch.setattr(hd, "_backends_initialised", lambda: False)
    env = {"SSLSTEAL_DISTRIBUTED": "env", "SSLSTEAL_CPU_DEVICES": "2"}
    assert configure_cpu_devices(env, cores=8, jaxlib_version=(0, 10)) == 2
    assert f"{DEVICE_COUNT_FLAG}=2" in env["XLA_FLAGS"]
    env = {"SSLSTEAL_DISTRIBUTED": "slurm"}
    assert configure_cpu_devices(env, cores=8, jaxlib_version=(0, 10)) is None and "XLA_FLAGS" not in env
