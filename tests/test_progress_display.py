"""What a person watching a run sees: a progress bar that keeps compilation out of its time left, and a rolling
mean of finished episodes that says "-" while none has ended."""
import io
import time

import numpy as np

from dipod_jax.run import harness


def test_progress_bar_restarts_its_clock_after_the_compiling_step():
    """The bar says "compiling" until the first step ends; from then on its rate counts only measured steps, so a
    slow first step (compilation) does not inflate the time left."""
    stream = io.StringIO()
    bar = harness.progress_bar(100, 0, True, "rl", file=stream, mininterval=0)
    assert bar.desc.startswith("rl (compiling)")
    bar.start_t -= 60.0  # the first step "took" a minute: compilation
    bar.update(1)
    assert bar.desc.rstrip(": ") == "rl" and bar.initial == 1
    time.sleep(0.05)
    bar.update(9)
    rate = bar.format_dict["rate"] or (bar.n - bar.initial) / (bar._time() - bar.start_t)
    assert rate > 9 / 5.0  # 9 steps in well under 5 s, not 10 steps in over a minute
    bar.close()


def test_rolling_episode_return_pools_seeds_and_says_dash_before_any_episode_ends():
    metrics = {"episode_return": np.array([[0.0, 10.0], [0.0, 30.0]]),
               "episodes_ended": np.array([[0.0, 1.0], [0.0, 3.0]])}
    history = harness.episode_returns(metrics)
    assert history == [(0.0, 0.0), (25.0, 4.0)]
    assert harness.rolling_episode_return(history[:1]) == "-"
    assert harness.rolling_episode_return(history) == "25.0"
    assert harness.rolling_episode_return(history + [(5.0, 4.0)] * 10, window=10) == "5.0"
