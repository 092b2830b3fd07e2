"""``AdaptationAnalyzer``: what a meta-adaptive run did, as a Backtrader analyzer.

Add it like any analyzer (``cerebro.addanalyzer(metabt.AdaptationAnalyzer)``);
``get_analysis()`` then holds the adaptation events next to SharpeRatio's or
DrawDown's numbers, also in the results of ``cerebro.optstrategy``.
"""

from __future__ import annotations

import backtrader as bt


class AdaptationAnalyzer(bt.Analyzer):
    """Adaptation events of the strategy, and whether its run was in-sample.

    ``get_analysis()`` returns a dict:

    - ``events``: one dict per event on a traded bar (from ``trade_start`` on, as
      in a run folder's ``adaptations.csv``), in the order they happened: ``date``
      (``datetime.date``), ``asset``, ``trigger`` (``"regime"``, ``"calendar"``,
      ``"oracle"`` for an adaptation; ``"alarm"`` when the detector moved the start
      of the regime, with NaN losses), ``window`` (labelled bars the adaptation
      used; for an alarm, bars since the estimated start), ``start`` (first date
      of an adaptation's window), ``loss_before`` / ``loss_after`` (support loss
      before and after the adaptation steps);
    - ``n_adaptations``: events that are not alarms;
    - ``in_sample``: True when the strategy traded bars its policy was trained
      on (only possible with ``allow_in_sample=True``): its results are not a
      test of the policy;
    - ``trained_until`` / ``first_traded``: the two dates that decide it (None
      when unknown).

    A strategy without adaptation events (any other ``bt.Strategy``) gives an
    empty list and ``in_sample`` False.
    """

    def start(self) -> None:
        self._events: list[dict] = []
        self._seen = 0

    def next(self) -> None:
        # Runs after the strategy's next(): this bar's events are there. Those of the
        # warm-up before trade_start are skipped; they set the state trading starts from.
        events = getattr(self.strategy, "events", ())
        if getattr(self.strategy, "trading", True):
            self._events.extend(dict(e) for e in events[self._seen :])
        self._seen = len(events)

    def stop(self) -> None:
        strategy = self.strategy
        until = getattr(strategy, "trained_until", None)
        first = getattr(strategy, "first_traded", None)
        self.rets.update(
            events=self._events,
            n_adaptations=sum(e.get("trigger") != "alarm" for e in self._events),
            in_sample=bool(getattr(strategy, "in_sample", False)),
            trained_until=None if until is None else until.date(),
            first_traded=None if first is None else first.date(),
        )

    def get_analysis(self) -> dict:
        return dict(self.rets)
