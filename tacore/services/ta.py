"""Built-in technical-analysis service: indicators and risk measures on a list of prices.

Methods (every one takes ``prices``, a list of finite numbers, oldest first):

- ``sma(prices, window)``: simple moving average.
- ``ema(prices, window)``: exponential moving average, seeded with the SMA of the first window.
- ``rsi(prices, period=14)``: Wilder's relative strength index.
- ``macd(prices, fast=12, slow=26, signal=9)``: MACD line, signal line and histogram.
- ``bollinger(prices, window=20, k=2)``: middle (SMA), upper and lower bands.
- ``returns(prices, kind="simple")``: simple or log returns.
- ``volatility(prices, window=None)``: population standard deviation of simple returns.
- ``max_drawdown(prices)``: largest peak-to-trough fall, as a positive fraction.
- ``var(prices, confidence=0.95)``: historical value at risk, as a positive fraction.

Indicator series follow TA-Lib: they are as long as ``prices``, with ``None`` where the
value is not defined yet (TA-Lib's lookback). Each function raises ``BadRequest`` naming
the method and exactly what is wrong; "item N" in a message is the 0-based list index.
"""

import inspect
import math

from tacore.errors import BadRequest


# --- input checks ---------------------------------------------------------------------


def _check_prices(method, prices):
    """Return ``prices`` as a list of floats, or raise BadRequest naming the first bad item."""
    if not isinstance(prices, list):
        raise BadRequest(f"{method}: 'prices' must be a list of numbers, got {type(prices).__name__}")
    for index, item in enumerate(prices):
        # bool is a subclass of int in Python, but true/false is never a price.
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise BadRequest(f"{method}: 'prices' must be a list of numbers; item {index} is {item!r}")
        if not math.isfinite(item):
            raise BadRequest(f"{method}: 'prices' must contain only finite numbers; item {index} is {item!r}")
    return [float(item) for item in prices]


def _check_count(method, prices, needed, reason=""):
    """Raise BadRequest if there are fewer than ``needed`` prices."""
    if len(prices) < needed:
        noun = "price" if needed == 1 else "prices"
        why = f" for {reason}" if reason else ""
        raise BadRequest(f"{method}: needs at least {needed} {noun}{why}, got {len(prices)}")


def _check_int(method, name, value, minimum=1):
    """Raise BadRequest unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadRequest(f"{method}: '{name}' must be an integer >= {minimum}, got {value!r}")


def _is_number(value):
    """Tell whether ``value`` is a finite int or float (booleans excluded)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


# --- shared arithmetic ----------------------------------------------------------------


def _mean(values):
    """Arithmetic mean of a non-empty list."""
    return math.fsum(values) / len(values)


def _pstdev(values):
    """Population standard deviation (divide by n) of a non-empty list."""
    centre = _mean(values)
    return math.sqrt(math.fsum((v - centre) ** 2 for v in values) / len(values))


def _ema_from(values, window, start):
    """EMA whose first value, at index ``start``, is the SMA of the ``window`` values ending there."""
    alpha = 2.0 / (window + 1)
    out = [None] * len(values)
    out[start] = _mean(values[start - window + 1 : start + 1])
    for i in range(start + 1, len(values)):
        out[i] = alpha * values[i] + (1 - alpha) * out[i - 1]
    return out


def _simple_returns(method, prices):
    """List of p[t]/p[t-1] - 1, rejecting a zero previous price."""
    for index, price in enumerate(prices[:-1]):
        if price == 0:
            raise BadRequest(f"{method}: simple returns need non-zero prices; item {index} is 0")
    return [prices[t] / prices[t - 1] - 1 for t in range(1, len(prices))]


# --- methods --------------------------------------------------------------------------


def sma(prices, window):
    """Simple moving average; the first ``window - 1`` values are None."""
    prices = _check_prices("sma", prices)
    _check_int("sma", "window", window)
    _check_count("sma", prices, window, f"window {window}")
    out = [None] * len(prices)
    for i in range(window - 1, len(prices)):
        out[i] = _mean(prices[i - window + 1 : i + 1])
    return out


def ema(prices, window):
    """EMA with alpha 2/(window+1), seeded at index window-1 with the SMA of the first window."""
    prices = _check_prices("ema", prices)
    _check_int("ema", "window", window)
    _check_count("ema", prices, window, f"window {window}")
    return _ema_from(prices, window, window - 1)


def rsi(prices, period=14):
    """Wilder's RSI as TA-Lib computes it; the first value is at index ``period``.

    The first average gain/loss is the plain mean of the first ``period`` changes; later
    ones use Wilder smoothing, avg = (prev * (period - 1) + current) / period.
    RSI = 100 * gain / (gain + loss), which equals 100 - 100 / (1 + gain / loss) but
    also covers the edge cases as TA-Lib does: no losses gives 100, and a flat stretch
    (no gains and no losses) gives 0.
    """
    prices = _check_prices("rsi", prices)
    _check_int("rsi", "period", period)
    _check_count("rsi", prices, period + 1, f"period {period}")
    changes = [prices[t] - prices[t - 1] for t in range(1, len(prices))]
    gain = _mean([max(c, 0.0) for c in changes[:period]])
    loss = _mean([max(-c, 0.0) for c in changes[:period]])
    out = [None] * len(prices)
    out[period] = _rsi_value(gain, loss)
    for t in range(period + 1, len(prices)):
        change = changes[t - 1]
        gain = (gain * (period - 1) + max(change, 0.0)) / period
        loss = (loss * (period - 1) + max(-change, 0.0)) / period
        out[t] = _rsi_value(gain, loss)
    return out


def _rsi_value(gain, loss):
    """RSI from average gain and loss; 0 when both are 0, as in TA-Lib."""
    total = gain + loss
    return 100.0 * gain / total if total != 0 else 0.0


def macd(prices, fast=12, slow=26, signal=9):
    """MACD as TA-Lib computes it: ``{"macd", "signal", "histogram"}`` series.

    Both EMAs start at index slow-1: the slow one is seeded with the SMA of the first
    ``slow`` prices and the fast one with the SMA of the ``fast`` prices ending there
    (prices[slow-fast:slow]), which is what TA-Lib does. The signal line is an EMA of
    the MACD line seeded with the SMA of its first ``signal`` values. Like TA-Lib, all
    three series are None before index slow+signal-2, where the signal line begins.
    """
    prices = _check_prices("macd", prices)
    _check_int("macd", "fast", fast)
    _check_int("macd", "slow", slow)
    _check_int("macd", "signal", signal)
    if fast >= slow:
        raise BadRequest(f"macd: 'fast' must be less than 'slow', got fast={fast}, slow={slow}")
    first = slow + signal - 2
    _check_count("macd", prices, first + 1, f"slow {slow} and signal {signal}")
    fast_ema = _ema_from(prices, fast, slow - 1)
    slow_ema = _ema_from(prices, slow, slow - 1)
    line = [f - s for f, s in zip(fast_ema[slow - 1 :], slow_ema[slow - 1 :])]
    signal_line = _ema_from(line, signal, signal - 1)
    lead = [None] * first
    kept_line = line[signal - 1 :]
    kept_signal = signal_line[signal - 1 :]
    return {
        "macd": lead + kept_line,
        "signal": lead + kept_signal,
        "histogram": lead + [m - s for m, s in zip(kept_line, kept_signal)],
    }


def bollinger(prices, window=20, k=2):
    """Bollinger bands: middle = SMA, upper/lower = middle +/- k * population std over the window."""
    prices = _check_prices("bollinger", prices)
    _check_int("bollinger", "window", window)
    if not _is_number(k) or k <= 0:
        raise BadRequest(f"bollinger: 'k' must be a number > 0, got {k!r}")
    _check_count("bollinger", prices, window, f"window {window}")
    upper = [None] * len(prices)
    middle = [None] * len(prices)
    lower = [None] * len(prices)
    for i in range(window - 1, len(prices)):
        chunk = prices[i - window + 1 : i + 1]
        middle[i] = _mean(chunk)
        width = k * _pstdev(chunk)
        upper[i] = middle[i] + width
        lower[i] = middle[i] - width
    return {"upper": upper, "middle": middle, "lower": lower}


def returns(prices, kind="simple"):
    """Simple (p[t]/p[t-1] - 1) or log (ln(p[t]/p[t-1])) returns; the first value is None.

    Needs at least 2 prices; log returns need every price > 0, simple returns need
    every price but the last to be non-zero.
    """
    prices = _check_prices("returns", prices)
    if kind not in ("simple", "log"):
        raise BadRequest(f"returns: 'kind' must be 'simple' or 'log', got {kind!r}")
    _check_count("returns", prices, 2)
    if kind == "simple":
        return [None] + _simple_returns("returns", prices)
    for index, price in enumerate(prices):
        if price <= 0:
            raise BadRequest(f"returns: log returns need prices > 0; item {index} is {price!r}")
    return [None] + [math.log(prices[t] / prices[t - 1]) for t in range(1, len(prices))]


def volatility(prices, window=None):
    """Population standard deviation of the last ``window`` simple returns (all of them if None).

    Needs at least 2 prices, and window + 1 prices when a window is given.
    """
    prices = _check_prices("volatility", prices)
    if window is None:
        _check_count("volatility", prices, 2)
        return _pstdev(_simple_returns("volatility", prices))
    _check_int("volatility", "window", window)
    _check_count("volatility", prices, window + 1, f"window {window}")
    return _pstdev(_simple_returns("volatility", prices[-(window + 1) :]))


def max_drawdown(prices):
    """Largest fall from a running peak, (peak - price) / peak; 0.0 if prices never fall.

    Needs at least 2 prices, all > 0 (a fall is measured as a fraction of the peak).
    """
    prices = _check_prices("max_drawdown", prices)
    _check_count("max_drawdown", prices, 2)
    for index, price in enumerate(prices):
        if price <= 0:
            raise BadRequest(f"max_drawdown: prices must be > 0; item {index} is {price!r}")
    peak = prices[0]
    worst = 0.0
    for price in prices:
        peak = max(peak, price)
        worst = max(worst, (peak - price) / peak)
    return worst


def var(prices, confidence=0.95):
    """Historical value at risk of simple returns, as a positive loss fraction.

    With the n simple returns sorted ascending as r[0..n-1], the (1 - confidence) quantile
    is taken by linear interpolation at position h = (n - 1) * (1 - confidence), as
    numpy.percentile's default 'linear' method does; the result is max(0, -quantile).
    Needs at least 2 prices.
    """
    prices = _check_prices("var", prices)
    if not _is_number(confidence) or not 0 < confidence < 1:
        raise BadRequest(f"var: 'confidence' must be a number strictly between 0 and 1, got {confidence!r}")
    _check_count("var", prices, 2)
    ordered = sorted(_simple_returns("var", prices))
    position = (len(ordered) - 1) * (1 - confidence)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    quantile = ordered[below] + (position - below) * (ordered[above] - ordered[below])
    return max(0.0, -quantile)


# --- service --------------------------------------------------------------------------


METHODS = {
    "bollinger": bollinger,
    "ema": ema,
    "macd": macd,
    "max_drawdown": max_drawdown,
    "returns": returns,
    "rsi": rsi,
    "sma": sma,
    "var": var,
    "volatility": volatility,
}


class TA:
    """The ``ta`` service: ``handle(method, params)`` runs one method of the METHODS table."""

    def start(self, config):
        """Accept the service configuration; this service has no options."""

    def handle(self, method, params):
        """Check the method name and parameter names, then call the method with ``params``."""
        function = METHODS.get(method) if isinstance(method, str) else None
        if function is None:
            raise BadRequest(f"unknown method {method!r}; known: {', '.join(sorted(METHODS))}")
        if not isinstance(params, dict):
            raise BadRequest(f"{method}: params must be an object, got {type(params).__name__}")
        # The function's signature is the single list of parameters it accepts.
        signature = inspect.signature(function).parameters
        for name in params:
            if name not in signature:
                raise BadRequest(f"{method}: unknown parameter {name!r}")
        for name, parameter in signature.items():
            if parameter.default is inspect.Parameter.empty and name not in params:
                raise BadRequest(f"{method}: missing required parameter {name!r}")
        return function(**params)
