"""ipywidgets front-ends for the lab experiments: sliders in, DataFrames and plots out.

The widgets are a thin layer: each control change rebuilds a config, calls the plain function in
:mod:`flashkit.lab.backoff` or :mod:`flashkit.lab.breaker`, keeps the result on the object
(``.data`` / ``.run``) and redraws. Bad combinations (a cap below the initial delay, say) show the
validation message instead of a plot and keep the last good result.

In a notebook::

    from flashkit.lab.widgets import BackoffExplorer, BreakerSimulator
    BackoffExplorer()          # displays itself
    BreakerSimulator()
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from flashkit.errors import StructuredError, ValidationError
from flashkit.lab.backoff import delay_distribution, plot_delay_distribution
from flashkit.lab.breaker import (
    BreakerRun,
    BreakerSettings,
    Scenario,
    plot_breaker_timeline,
    simulate_breaker,
)
from flashkit.lab.tuning import breaker_values, retry_values, write_settings
from flashkit.retry import Jitter, RetryConfig

__all__ = ["BackoffExplorer", "BreakerSimulator"]


def _show(output: w.Output, *items: Any) -> None:
    """Replace the Output's content with ``items`` (figures are closed after display)."""
    import matplotlib.pyplot as plt
    from IPython.display import clear_output, display
    from matplotlib.figure import Figure

    with output:
        clear_output(wait=True)  # type: ignore[no-untyped-call]
        for item in items:
            display(item)  # type: ignore[no-untyped-call]
            if isinstance(item, Figure):
                plt.close(item)


_STYLE = {"description_width": "130px"}


def _slider(cls: type[w.ValueWidget], description: str = "", **kwargs: Any) -> w.ValueWidget:
    """A slider that updates on release (each update reruns an experiment)."""
    return cls(description=description, style=_STYLE, continuous_update=False, **kwargs)


class _Panel:
    """A VBox of controls over an Output, with a row that writes what was tuned to a settings
    file; displays itself."""

    controls: dict[str, w.ValueWidget]
    output: w.Output
    message: w.HTML
    widget: w.VBox

    def _layout(self, rows: list[list[str]]) -> None:
        self.output = w.Output()
        self.message = w.HTML("")
        self.path = w.Text(value="flashkit.toml", description="settings file", style=_STYLE)
        self.save = w.Button(description="write flashkit.toml", icon="save")
        self.save.on_click(lambda _button: self._save())
        boxes = [w.HBox([self.controls[name] for name in row]) for row in rows]
        saving = w.HBox([self.path, self.save])
        self.widget = w.VBox([*boxes, saving, self.message, self.output])
        for control in self.controls.values():
            control.observe(self._on_change, names="value")

    def _on_change(self, change: dict[str, Any]) -> None:
        self.update()

    def update(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def values(self) -> dict[str, Any]:  # pragma: no cover - overridden
        """The tuned values as ``{"section.field": value}`` of :class:`flashkit.config.Settings`."""
        raise NotImplementedError

    def export(self, path: str | Path = "flashkit.toml") -> Path:
        """Write the tuned values into the settings file at ``path`` (see
        :func:`flashkit.lab.tuning.write_settings`); ``flashkit process --config`` uses them."""
        return write_settings(path, self.values())

    def _save(self) -> None:
        try:
            target = self.export(self.path.value)
        except (StructuredError, OSError, ValueError) as error:
            text = error.message if isinstance(error, StructuredError) else str(error)
            self.message.value = f"<span style='color:#b00'>{html.escape(text)}</span>"
            return
        self.message.value = (
            f"wrote {html.escape(str(target))}: <code>flashkit process WORDS.csv --config "
            f"{html.escape(str(target))}</code> runs with it"
        )

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)  # type: ignore[no-untyped-call]


class BackoffExplorer(_Panel):
    """Sliders over :class:`RetryConfig` (initial delay, cap, base, attempts, jitter) showing the
    distribution of each retry's delay. ``.config`` and ``.data`` hold the latest result."""

    def __init__(self, config: RetryConfig | None = None, *, samples: int = 2000, seed: int = 0):
        config = config if config is not None else RetryConfig()
        self.samples = samples
        self.seed = seed
        self.controls = {
            "initial_delay": _slider(
                w.FloatLogSlider,
                "initial (s)",
                value=config.initial_delay or 0.001,
                base=10,
                min=-3,
                max=2,
            ),
            "max_delay": _slider(
                w.FloatLogSlider, "cap (s)", value=config.max_delay or 0.001, base=10, min=-3, max=3
            ),
            "exponential_base": _slider(
                w.FloatSlider, "base", value=config.exponential_base, min=1.0, max=4.0, step=0.1
            ),
            "max_attempts": _slider(
                w.IntSlider, "attempts", value=config.max_attempts, min=2, max=12
            ),
            "jitter": w.Dropdown(
                options=[(j.name.lower(), j) for j in Jitter],
                value=config.jitter if isinstance(config.jitter, Jitter) else Jitter.EQUAL,
                description="jitter",
                style=_STYLE,
            ),
        }
        self.config = config
        self.data = pd.DataFrame(columns=["sample", "retry", "delay", "cumulative"])
        self._layout(
            [["initial_delay", "max_delay"], ["exponential_base", "max_attempts"], ["jitter"]]
        )
        self.update()

    def update(self) -> None:
        values = {name: control.value for name, control in self.controls.items()}
        try:
            config = RetryConfig(**values)
        except ValidationError as error:
            self.message.value = f"<span style='color:#b00'>{html.escape(error.message)}</span>"
            return
        self.message.value = ""
        self.config = config
        self.data = delay_distribution(config, samples=self.samples, seed=self.seed)
        table = (
            self.data.groupby("retry")["delay"]
            .describe(percentiles=[0.5, 0.95])[["mean", "50%", "95%", "max"]]
            .round(3)
        )
        figure = plot_delay_distribution(
            self.data, title=f"{Jitter(config.jitter).name.lower()} jitter, {self.samples} samples"
        )
        _show(self.output, figure, table)

    def values(self) -> dict[str, Any]:
        """The ``[retry]`` settings of the current :class:`RetryConfig`."""
        return retry_values(self.config)


class BreakerSimulator(_Panel):
    """Sliders over a :class:`CircuitBreaker` (threshold, min throughput, window, break duration
    and its growth, half-open probes) driving :func:`simulate_breaker` through ``scenario``;
    shows the timeline against the same run without a breaker. ``.run`` and ``.baseline`` hold
    the latest :class:`BreakerRun`\\ s."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        settings: BreakerSettings | None = None,
        *,
        seed: int = 0,
    ) -> None:
        self.scenario = scenario if scenario is not None else Scenario()
        settings = settings if settings is not None else BreakerSettings()
        self.seed = seed
        self.controls = {
            "failure_threshold": _slider(
                w.FloatSlider,
                value=settings.failure_threshold,
                min=0.05,
                max=1.0,
                step=0.05,
                description="failure threshold",
            ),
            "min_throughput": _slider(
                w.IntSlider,
                value=settings.min_throughput,
                min=2,
                max=200,
                description="min throughput",
            ),
            "sampling_duration": _slider(
                w.FloatSlider,
                value=settings.sampling_duration,
                min=1.0,
                max=60.0,
                step=1.0,
                description="window (s)",
            ),
            "break_duration": _slider(
                w.FloatSlider,
                value=settings.break_duration,
                min=0.5,
                max=60.0,
                step=0.5,
                description="break (s)",
            ),
            "growth": _slider(
                w.FloatSlider,
                value=settings.growth,
                min=1.0,
                max=4.0,
                step=0.5,
                description="break growth ×",
            ),
            "half_open_max_calls": _slider(
                w.IntSlider,
                value=settings.half_open_max_calls,
                min=1,
                max=10,
                description="half-open probes",
            ),
        }
        self.baseline = simulate_breaker(self.scenario, use_breaker=False, seed=seed)
        self.settings = settings
        self.run: BreakerRun | None = None
        self._layout(
            [
                ["failure_threshold", "min_throughput"],
                ["sampling_duration", "break_duration"],
                ["growth", "half_open_max_calls"],
            ]
        )
        self.update()

    def update(self) -> None:
        values = {name: control.value for name, control in self.controls.items()}
        settings = dataclasses.replace(self.settings, **values)
        try:
            run = simulate_breaker(self.scenario, settings, seed=self.seed)
        except ValidationError as error:
            self.message.value = f"<span style='color:#b00'>{html.escape(error.message)}</span>"
            return
        self.message.value = ""
        self.settings = settings
        self.run = run
        summary = pd.DataFrame(
            {
                "with breaker": {k: v for k, v in run.summary.items() if k != "settings"},
                "no breaker": {k: v for k, v in self.baseline.summary.items() if k != "settings"},
            }
        )
        figure = plot_breaker_timeline(run, self.scenario, baseline=self.baseline)
        _show(self.output, figure, summary)

    def values(self) -> dict[str, Any]:
        """The ``[breaker]`` settings of the current knobs."""
        return breaker_values(self.settings)
