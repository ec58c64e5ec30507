"""``init_ray`` address handling: every form a user puts in RAY_ADDRESS either resolves to
something ``ray.init`` accepts or fails with the fix in the message (no Ray started here)."""

from __future__ import annotations

import pytest

from distil.ops.cluster import GPUUnavailableError, RayAddressError, resolve_address, wait_for_gpus


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        ("", None),
        ("local", None),
        ("auto", "auto"),
        ("10.0.0.5:6379", "10.0.0.5:6379"),
        ("ray://head:10001", "ray://head:10001"),
    ],
)
def test_addresses_ray_accepts_pass_through(monkeypatch, given, expected):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(given) == expected


def test_ray_address_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_address(None) == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert resolve_address(None) is None


def test_remote_job_api_url_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://ray-head.example:8265")
    with pytest.raises(RayAddressError) as e:
        resolve_address(None)
    msg = str(e.value)
    assert "job-API URL" in msg and "ray job submit --address http://ray-head.example:8265" in msg


def test_loopback_job_api_url_without_a_cluster_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTIL_HOME", str(tmp_path))  # no local stack state here
    monkeypatch.setattr("ray._private.services.find_gcs_addresses", lambda: [])
    with pytest.raises(RayAddressError, match="no Ray cluster on this machine"):
        resolve_address("http://127.0.0.1:59999")


def test_a_word_is_not_an_address():
    with pytest.raises(RayAddressError, match="expected host:port"):
        resolve_address("myhead")


class _Cluster:
    """A cluster whose GPU count follows a script over (simulated) time, and the autoscaler
    requests made to it: the inputs ``wait_for_gpus`` decides on, without a Ray."""

    def __init__(self, gpus_at: list[tuple[float, int]]):
        self.now = 0.0
        self.gpus_at = gpus_at  # (from time t, n GPUs)
        self.requests: list[int] = []

    def gpus(self) -> int:
        return max(n for t, n in self.gpus_at if t <= self.now)

    def sleep(self, s: float) -> None:
        assert s > 0
        self.now += s

    def kwargs(self) -> dict:
        return dict(
            gpus=self.gpus, request=self.requests.append, clock=lambda: self.now, sleep=self.sleep
        )


def test_gpus_already_there_no_wait_no_request():
    c = _Cluster([(0, 8)])
    assert wait_for_gpus("distil", 8, wait_s=600, cpu_fix="x", **c.kwargs()) == 8
    assert c.now == 0 and c.requests == []


def test_gpus_that_join_later_are_requested_and_waited_for():
    c = _Cluster([(0, 0), (95, 2), (240, 8)])  # a GPU group scaling up from zero
    assert wait_for_gpus("distil", 8, wait_s=600, cpu_fix="x", poll_s=5, **c.kwargs()) == 8
    assert 240 <= c.now < 250
    assert c.requests == [8, 0]  # asked the autoscaler, then withdrew the request


def test_too_few_gpus_after_the_wait_is_an_error_naming_wanted_and_seen(caplog):
    c = _Cluster([(0, 0), (30, 2)])
    with pytest.raises(GPUUnavailableError) as e:
        wait_for_gpus(
            "distil (use_gpu: true)", 8, wait_s=120, cpu_fix="use_gpu: false", **c.kwargs()
        )
    msg = str(e.value)
    assert "asked for 8 GPU(s) but the Ray cluster has 2 after waiting 120 s" in msg
    assert "gpu_wait_s" in msg and "use_gpu: false" in msg and "raycluster.yaml" in msg
    assert c.now == pytest.approx(120) and c.requests == [8, 0]
    assert "waiting for 8 GPU(s), the cluster has 0" in caplog.text


def test_zero_wait_fails_at_once():
    c = _Cluster([(0, 0)])
    with pytest.raises(GPUUnavailableError, match="has 0 after waiting 0 s"):
        wait_for_gpus("logits", 1, wait_s=0, cpu_fix="device: cpu", **c.kwargs())
    assert c.now == 0


def test_at_least_takes_what_came_when_the_wait_ends():
    c = _Cluster([(0, 0), (50, 2)])
    got = wait_for_gpus("logits", 4, at_least=1, wait_s=100, cpu_fix="x", **c.kwargs())
    assert got == 2 and c.now == pytest.approx(100)


def test_the_request_is_withdrawn_even_when_polling_fails():
    c = _Cluster([(0, 0)])
    calls = iter([0])

    def gpus():
        try:
            return next(calls)
        except StopIteration:
            raise ConnectionError("GCS gone") from None

    with pytest.raises(ConnectionError):
        wait_for_gpus("distil", 2, wait_s=60, cpu_fix="x", **{**c.kwargs(), "gpus": gpus})
    assert c.requests == [2, 0]


def test_at_least_none_came_is_an_error_saying_both_numbers():
    c = _Cluster([(0, 0)])
    with pytest.raises(GPUUnavailableError) as e:
        wait_for_gpus("logits", 4, at_least=1, wait_s=30, cpu_fix="device: cpu", **c.kwargs())
    assert "asked for 4 GPU(s), needs at least 1, but the Ray cluster has 0" in str(e.value)
