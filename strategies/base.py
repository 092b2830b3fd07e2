"""Target-weight base strategy: subclasses say *what* to hold, this class trades it.

Every strategy in metabt (the static comparators and the meta-adaptive policy)
decides, at the close of each bar, a position in [-1, 1] per asset. This base
class turns those positions into portfolio weights, records them, and places
market orders that fill at the next bar's open. Keeping the order logic in one
place means every strategy in a comparison pays the same costs in the same way.
"""

from __future__ import annotations

import math

import backtrader as bt
import pandas as pd

from metabt.feeds.features import VOL_FLOOR, FeatureSpec

VOL_HALFLIFE = FeatureSpec().vol_halflife


class TargetWeightStrategy(bt.Strategy):
    """Trade the target weights returned by :meth:`target_weights` each bar.

    ``target_weights`` is called on every bar once all indicators are ready,
    also during the warm-up before ``trade_start``, so that stateful rules and
    detectors see the same history whatever the first traded day. Weights are
    recorded and orders placed only from ``trade_start`` on.

    Params:
        trade_start (pd.Timestamp | None): first bar (by calendar day) on which
            weights are recorded and orders placed; None trades from the first
            ready bar. Bars before it only warm indicators up.
        gross_cap (float): cap on the sum of absolute weights (1.0 = no
            leverage). Targets above it are scaled down proportionally.
        asset_weight (float | None): portfolio weight of a full (+1 / -1)
            position in one asset; None means 1 / number of assets.
        vol_target (float | None): daily volatility each full position is sized
            to (0.01 = 1 % a day): the weight of position ``p`` is
            ``p * asset_weight * vol_target / vol``, with ``vol`` the asset's
            trailing daily vol (:meth:`asset_vol`, or ``vol_forecast``). None = no
            vol targeting.
        vol_forecast (dict | None): the volatility estimator to size by, as
            ``{asset name: pd.Series of daily vol indexed by date}`` whose value at
            a date is known at that bar's close (``strategies.vol_estimators.
            forecast_vols``: ``ewm``, ``garch``, ``gjr_garch``, ``har``, ``meta``).
            None = the built-in EWM estimate. A date with no forecast holds nothing.
        rebalance_threshold (float): an asset is re-ordered only when its
            target weight moved by more than this since its last order
            (0.0 = on every change). Going flat is always ordered.
        cash_buffer (float): headroom kept when buying, as a fraction of the
            value bought. Orders are sized at the decision bar's close but fill
            at the next open; when the cash left after this bar's sells cannot
            pay ``(1 + cash_buffer)`` times the buys, the buys are scaled down
            together (the recorded weight stays the decision). A gap up larger
            than the headroom makes the broker reject a buy: it is counted and
            re-ordered on the next bar.
    """

    params = (
        ("trade_start", None),
        ("gross_cap", 1.0),
        ("asset_weight", None),
        ("vol_target", None),
        ("rebalance_threshold", 0.0),
        ("cash_buffer", 0.01),
        ("vol_forecast", None),
    )

    def __init__(self) -> None:
        if self.p.gross_cap <= 0:
            raise ValueError(f"gross_cap must be > 0, got {self.p.gross_cap}")
        if not 0.0 <= self.p.cash_buffer < 1.0:
            raise ValueError(f"cash_buffer must be in [0, 1), got {self.p.cash_buffer}")
        if self.p.vol_target is not None and not self.p.vol_target > 0:
            raise ValueError(f"vol_target must be > 0 (daily vol) or None, got {self.p.vol_target}")
        # Per asset: (last close, EWM sum of squared log returns, EWM weight), the
        # same estimator as feeds.features.trailing_vol, updated once per bar.
        self._vol_state: dict = {}
        self._vol_decay = 0.5 ** (1.0 / VOL_HALFLIFE)
        # Per asset: date -> forecast vol, looked up once per bar when sizing.
        self._vol_forecast = {
            name: {pd.Timestamp(t).date(): float(v) for t, v in series.items()}
            for name, series in (self.p.vol_forecast or {}).items()
        }
        n = len(self.datas)
        self._asset_weight = 1.0 / n if self.p.asset_weight is None else float(self.p.asset_weight)
        # Compare bar times as backtrader floats: cheaper than building dates each bar.
        ts = self.p.trade_start
        self._start_num = (
            -math.inf if ts is None else bt.date2num(pd.Timestamp(ts).normalize().to_pydatetime())
        )
        self._last_target = {d: 0.0 for d in self.datas}
        self._retry: set = set()
        self._weight_rows: list[tuple[float, tuple[float, ...]]] = []
        self._trade_rows: list[tuple] = []
        self.n_rejected = 0
        #: Free-form records (one dict each) a subclass appends, e.g. adaptation events.
        self.events: list[dict] = []

    # -- to override ---------------------------------------------------------
    def target_weights(self) -> dict:
        """Return ``{data: position}`` with positions in [-1, 1] for this bar.

        Assets left out are held flat. Only bars <= the current one may be read.
        """
        raise NotImplementedError

    def asset_vol(self, d: bt.LineSeries) -> float:
        """Trailing daily vol of ``d`` known at this bar (for vol targeting).

        The EWM root-mean-square of close-to-close log returns with a
        ``VOL_HALFLIFE``-bar half-life, floored at ``VOL_FLOOR``: the formula of
        ``feeds.features.trailing_vol``, updated on every bar by :meth:`next`.
        Subclasses whose feed carries the vol as a line read it from there.
        """
        state = self._vol_state.get(d)
        if state is None or state[3] == 0.0:
            return math.nan
        return max(math.sqrt(state[2] / state[3]), VOL_FLOOR)

    def forecast_vol(self, d: bt.LineSeries) -> float:
        """The ``vol_forecast`` value of ``d`` at this bar's date (NaN if it has none)."""
        vol = self._vol_forecast.get(d._name, {}).get(self.datetime.date(0), math.nan)
        return max(vol, VOL_FLOOR) if math.isfinite(vol) else math.nan

    def _update_vol(self) -> None:
        for d in self.datas:
            bars, close = len(d), float(d.close[0])
            state = self._vol_state.get(d)
            if state is None:
                self._vol_state[d] = (bars, close, 0.0, 0.0)
            elif state[0] != bars:  # a feed with no bar on this date did not move
                r2 = math.log(close / state[1]) ** 2
                a = self._vol_decay
                self._vol_state[d] = (bars, close, r2 + a * state[2], 1.0 + a * state[3])

    # -- machinery -------------------------------------------------------------
    @property
    def trading(self) -> bool:
        """True once the current bar is on or after ``trade_start``."""
        return self.datetime[0] >= self._start_num

    def _scale(self, positions: dict) -> list[float]:
        weights = []
        for d in self.datas:
            pos = float(positions.get(d, 0.0))
            if not math.isfinite(pos):
                raise ValueError(
                    f"{type(self).__name__} returned position {pos} for {d._name} on "
                    f"{self.datetime.date(0)}; positions must be finite numbers in [-1, 1]"
                )
            weight = min(1.0, max(-1.0, pos)) * self._asset_weight
            if self.p.vol_target is not None and weight != 0.0:
                # A vol_forecast replaces only the sizing: a subclass's own asset_vol
                # (e.g. the vol its labels are scaled by) is left as it is.
                vol = self.forecast_vol(d) if self._vol_forecast else self.asset_vol(d)
                # No vol yet (first bar): hold nothing rather than guess a size.
                weight = weight * self.p.vol_target / vol if math.isfinite(vol) else 0.0
            weights.append(weight)
        gross = sum(abs(w) for w in weights)
        if gross > self.p.gross_cap:
            weights = [w * self.p.gross_cap / gross for w in weights]
        return weights

    def next(self) -> None:
        # A subclass that reads the vol from its feed (asset_vol overridden) needs no estimate.
        if (
            self.p.vol_target is not None
            and not self._vol_forecast
            and type(self).asset_vol is TargetWeightStrategy.asset_vol
        ):
            self._update_vol()
        positions = self.target_weights()
        if not self.trading:
            return
        weights = self._scale(positions)
        self._weight_rows.append((self.datetime[0], tuple(weights)))

        value = self.broker.getvalue()
        sells: list[tuple[bt.DataBase, float, float]] = []
        buys: list[tuple[bt.DataBase, float, float]] = []
        for d, w in zip(self.datas, weights):
            last = self._last_target[d]
            moved = abs(w - last) > self.p.rebalance_threshold or (w == 0.0 and last != 0.0)
            if moved or d in self._retry:
                self._retry.discard(d)
                self._last_target[d] = w
                held = self.broker.getvalue(datas=[d])
                (sells if w * value < held else buys).append((d, held, w * value - held))
        # Every sell (closing a long or opening a short) frees cash, every buy
        # uses it. Earlier buys and price drift can leave less cash than the new
        # targets need; scale the buys down to what is there, with cash_buffer
        # of headroom for a gap up and costs at the fill, rather than let the
        # broker reject them whole at the next open.
        cash = self.broker.getcash() - sum(delta for _, _, delta in sells)
        need = sum(delta for _, _, delta in buys) * (1.0 + self.p.cash_buffer)
        scale = min(1.0, max(0.0, cash) / need) if need > 0 else 1.0
        # Sells first: the broker fills orders in submission order, so the
        # cash they free is there for the buys at the same open.
        for d, held, delta in sells + [(d, held, delta * scale) for d, held, delta in buys]:
            self.order_target_percent(data=d, target=(held + delta) / value)

    def notify_order(self, order: bt.Order) -> None:
        # iterpending() yields the fills new since the last notification, so a
        # short cover that fills before the opening leg is refused is still logged.
        for bit in order.executed.iterpending():
            self._trade_rows.append(
                (bit.dt, order.data._name, bit.size, bit.price, bit.size * bit.price, bit.comm)
            )
        if order.status in (order.Margin, order.Rejected):
            # Not enough cash at the fill price (a gap up beyond cash_buffer):
            # count it and re-order next bar rather than silently hold less.
            self.n_rejected += 1
            self._retry.add(order.data)

    # -- results -----------------------------------------------------------------
    def weights_frame(self) -> pd.DataFrame:
        """Recorded target weights, long format: ``date, asset, weight``."""
        names = [d._name for d in self.datas]
        rows = [
            (bt.num2date(t), name, w) for t, ws in self._weight_rows for name, w in zip(names, ws)
        ]
        frame = pd.DataFrame(rows, columns=["date", "asset", "weight"])
        frame["date"] = pd.to_datetime(frame["date"]).dt.normalize()
        return frame

    def trades_frame(self) -> pd.DataFrame:
        """Filled orders: ``date, asset, size, price, value, commission``.

        ``size`` and ``value`` (= size * fill price) are negative for sells.
        """
        frame = pd.DataFrame(
            self._trade_rows, columns=["date", "asset", "size", "price", "value", "commission"]
        )
        frame["date"] = pd.to_datetime([bt.num2date(t) for t in frame["date"]]).normalize()
        return frame
