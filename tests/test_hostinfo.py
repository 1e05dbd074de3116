"""CPU steal accounting (keras_resnet.hostinfo), on fake /proc/stat files."""

import pytest

from keras_resnet import hostinfo


def _stat(path, user, idle, steal):
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    path.write_text(f"cpu  {user} 0 0 {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")


def test_steal_fraction_is_the_share_of_cpu_time_taken_between_start_and_end(tmp_path):
    stat = tmp_path / "stat"
    _stat(stat, user=1000, idle=500, steal=100)
    meter = hostinfo.StealMeter(str(stat))
    assert hostinfo.cpu_times(str(stat)) == (100, 1600)
    # Since the start: 540 busy, 0 idle, 460 stolen of 1000 ticks.
    _stat(stat, user=1540, idle=500, steal=560)
    assert meter.fraction() == pytest.approx(0.46)
    assert "took 46% of this machine's CPU time" in hostinfo.steal_warning(meter.fraction())


def test_no_steal_or_no_proc_stat_gives_no_warning(tmp_path):
    stat = tmp_path / "stat"
    _stat(stat, user=1000, idle=500, steal=0)
    meter = hostinfo.StealMeter(str(stat))
    _stat(stat, user=2000, idle=600, steal=20)
    assert meter.fraction() == pytest.approx(20 / 1120, abs=1e-3)
    assert hostinfo.steal_warning(meter.fraction()) is None  # under 5%: not worth a warning
    missing = hostinfo.StealMeter(str(tmp_path / "absent"))  # macOS, Windows: unknown, not 0
    assert hostinfo.cpu_times(str(tmp_path / "absent")) is None
    assert missing.fraction() is None and hostinfo.steal_warning(None) is None
    (tmp_path / "odd").write_text("intr 1 2 3\n")
    assert hostinfo.cpu_times(str(tmp_path / "odd")) is None


def test_the_real_proc_stat_reads_where_it_exists():
    times = hostinfo.cpu_times()
    if times is None:
        pytest.skip("no /proc/stat on this OS")
    steal, total = times
    assert 0 <= steal <= total and total > 0
