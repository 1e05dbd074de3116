"""How much of the machine a run actually had: CPU steal time on virtual machines.

On a cloud VM the hypervisor can hand part of each core to other guests ("steal"
time in `top`). A training run or benchmark then takes longer for reasons that
are not in the code, and figures from different days stop being comparable. Every
training run records the steal share of its `model.fit` in metrics.json, and the
benchmarks record it beside their figures, so a slow number can be told apart from
a slow machine.
"""

_STAT = "/proc/stat"
# Fields of the aggregate "cpu" line: user nice system idle iowait irq softirq steal
# (guest time is already counted in user, so it is not added again).
_STEAL_FIELD = 7


def cpu_times(path=_STAT):
    """(steal, total) CPU time of all cores in clock ticks since boot, or None.

    None where there is no Linux `/proc/stat` (macOS, Windows) or it cannot be read.
    """
    try:
        with open(path) as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) < 1 + _STEAL_FIELD + 1:
        return None
    values = [int(v) for v in first[1:1 + _STEAL_FIELD + 1]]
    return values[_STEAL_FIELD], sum(values)


class StealMeter:
    """The share of CPU time the hypervisor took between `__init__` and `fraction()`.

        meter = StealMeter()
        ...  # train or benchmark
        meter.fraction()  # e.g. 0.46: this run had about half the CPU it asked for
    """

    def __init__(self, path=_STAT):
        self.path = path
        self.start = cpu_times(path)

    def fraction(self):
        """Steal share of all CPU time since the start, in [0, 1]; None when unknown."""
        end = cpu_times(self.path)
        if self.start is None or end is None or end[1] <= self.start[1]:
            return None
        return round((end[0] - self.start[0]) / (end[1] - self.start[1]), 3)


def steal_warning(fraction, threshold=0.05):
    """A one-line warning when the hypervisor took more than `threshold` of the CPU, else None."""
    if fraction is None or fraction <= threshold:
        return None
    return (f"The hypervisor took {fraction:.0%} of this machine's CPU time during the run (steal "
            "time): its wall times and images/s are low by about that much for reasons outside "
            "this program. Compare speeds measured in the same run, not across runs.")
