"""Tests for the built-in technical-analysis service, tacore.services.ta.

Expected numbers were computed independently in a scratch virtualenv (numpy 2.4, pandas 3.1,
TA-Lib 0.8.2) outside the repository, rounded to 6 decimals (8 for returns) and pasted here.
Each block says how; the sma/ema/rsi/macd/bollinger series were also checked equal to TA-Lib.
"""

import json
import math

import pytest

from tacore.errors import BadRequest
from tacore.services import ta

# 40 closing prices (the classic Wilder RSI example series, extended).
PRICES = [
    44.34, 44.09, 44.15, 43.61, 44.33, 44.83, 45.10, 45.42, 45.84, 46.08,
    45.89, 46.03, 45.61, 46.28, 46.28, 46.00, 46.03, 46.41, 46.22, 45.64,
    46.21, 46.25, 45.71, 46.45, 45.78, 45.35, 44.03, 44.18, 44.22, 44.57,
    43.42, 42.66, 43.13, 43.90, 44.60, 45.25, 44.85, 45.58, 46.02, 45.70,
]

_ = None  # shorter spelling of "not defined yet" in the expected series below

# pandas Series(PRICES).rolling(5).mean()
SMA5 = [
    _, _, _, _, 44.104, 44.202, 44.404, 44.658, 45.104, 45.454,
    45.666, 45.852, 45.89, 45.978, 46.018, 46.04, 46.04, 46.2, 46.188, 46.06,
    46.102, 46.146, 46.006, 46.052, 46.08, 45.908, 45.464, 45.158, 44.712, 44.47,
    44.084, 43.81, 43.6, 43.536, 43.542, 43.908, 44.346, 44.836, 45.26, 45.48,
]

# pandas ewm(span=5, adjust=False) over [mean(PRICES[0:5])] + PRICES[5:] (SMA seed)
EMA5 = [
    _, _, _, _, 44.104, 44.346, 44.597333, 44.871556, 45.19437, 45.48958,
    45.623053, 45.758702, 45.709135, 45.899423, 46.026282, 46.017521, 46.021681, 46.151121, 46.17408, 45.996054,
    46.067369, 46.128246, 45.988831, 46.142554, 46.021703, 45.797802, 45.208534, 44.86569, 44.65046, 44.62364,
    44.222427, 43.701618, 43.511078, 43.640719, 43.960479, 44.39032, 44.543546, 44.889031, 45.266021, 45.41068,
]

# Gains/losses of diff(); seed = mean of the first 14, then pandas ewm(alpha=1/14, adjust=False);
# RSI = 100 - 100 / (1 + gain / loss)
RSI14 = [
    _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, 70.464135, 66.249619, 66.480942, 69.346853, 66.294713, 57.915021,
    62.880718, 63.208789, 56.011585, 62.339929, 54.670971, 50.386815, 40.019424, 41.492635, 41.90243, 45.499497,
    37.322778, 33.090483, 37.788772, 44.646419, 50.038247, 54.472906, 51.446615, 56.226218, 58.85528, 56.211101,
]

# Same as RSI14 with period 5 (ewm alpha=1/5)
RSI5 = [
    _, _, _, _, _, 61.835749, 67.185877, 72.828891, 78.807947, 81.686468,
    72.007551, 74.761893, 54.611202, 70.47804, 70.47804, 57.38002, 58.415069, 69.964393, 59.616193, 38.108493,
    57.114688, 58.239613, 40.369927, 60.913414, 43.825507, 35.774455, 20.983043, 25.366319, 26.721306, 38.861671,
    23.125804, 17.329201, 30.747732, 48.024258, 59.504406, 67.767855, 58.573681, 68.364802, 73.146637, 64.309591,
]

# MACD(fast=5, slow=10, signal=4): both EMAs are pandas ewm(adjust=False) seeded at index 9
# (fast with mean(PRICES[5:10]), slow with mean(PRICES[0:10])); signal = ewm(span=4) of the
# line seeded with the mean of its first 4 values; everything blanked before index 10+4-2.
MACD_5_10_4 = [
    _, _, _, _, _, _, _, _, _, _,
    _, _, 0.447179, 0.453966, 0.430155, 0.348673, 0.287642, 0.294495, 0.251597, 0.125071,
    0.13484, 0.138058, 0.049627, 0.110506, 0.0355, -0.072715, -0.327335, -0.423653, -0.444453, -0.375832,
    -0.489867, -0.63753, -0.608224, -0.43871, -0.213598, 0.02062, 0.08652, 0.227827, 0.357763, 0.35847,
]
SIGNAL_5_10_4 = [
    _, _, _, _, _, _, _, _, _, _,
    _, _, 0.577919, 0.528338, 0.489064, 0.432908, 0.374801, 0.342679, 0.306246, 0.233776,
    0.194202, 0.171744, 0.122897, 0.117941, 0.084964, 0.021893, -0.117798, -0.24014, -0.321865, -0.343452,
    -0.402018, -0.496223, -0.541023, -0.500098, -0.385498, -0.223051, -0.099223, 0.031597, 0.162064, 0.240626,
]
HISTOGRAM_5_10_4 = [
    _, _, _, _, _, _, _, _, _, _,
    _, _, -0.130739, -0.074372, -0.05891, -0.084235, -0.08716, -0.048184, -0.054649, -0.108705,
    -0.059361, -0.033686, -0.07327, -0.007435, -0.049464, -0.094608, -0.209536, -0.183512, -0.122588, -0.03238,
    -0.087849, -0.141307, -0.067201, 0.061388, 0.1719, 0.243671, 0.185742, 0.19623, 0.195699, 0.117844,
]

# talib.MACD(PRICES) with the defaults 12/26/9: the values from index 33 on
MACD_DEFAULT_TAIL = [-0.421549, -0.364295, -0.263435, -0.21332, -0.113391, 0.001292, 0.065602]
SIGNAL_DEFAULT_TAIL = [-0.040969, -0.105634, -0.137195, -0.15242, -0.144614, -0.115433, -0.079226]
HISTOGRAM_DEFAULT_TAIL = [-0.380579, -0.25866, -0.12624, -0.0609, 0.031223, 0.116725, 0.144828]

# pandas rolling(10).mean() +/- 1.5 * rolling(10).std(ddof=0)
BB_UPPER = [
    _, _, _, _, _, _, _, _, _, 45.937607,
    46.167967, 46.372183, 46.430328, 46.424968, 46.435109, 46.390538, 46.331952, 46.381298, 46.41054, 46.42251,
    46.453571, 46.483003, 46.466857, 46.509596, 46.477934, 46.526959, 46.834534, 46.790237, 46.684166, 46.617852,
    46.481139, 46.307222, 46.079532, 45.477549, 45.117179, 45.080557, 45.229074, 45.554462, 45.961282, 46.181295,
]
BB_MIDDLE = [
    _, _, _, _, _, _, _, _, _, 44.779,
    44.934, 45.128, 45.274, 45.541, 45.736, 45.853, 45.946, 46.045, 46.083, 46.039,
    46.071, 46.093, 46.103, 46.12, 46.07, 46.005, 45.805, 45.582, 45.382, 45.275,
    44.996, 44.637, 44.379, 44.124, 44.006, 43.996, 44.078, 44.218, 44.398, 44.511,
]
BB_LOWER = [
    _, _, _, _, _, _, _, _, _, 43.620393,
    43.700033, 43.883817, 44.117672, 44.657032, 45.036891, 45.315462, 45.560048, 45.708702, 45.75546, 45.65549,
    45.688429, 45.702997, 45.739143, 45.730404, 45.662066, 45.483041, 44.775466, 44.373763, 44.079834, 43.932148,
    43.510861, 42.966778, 42.678468, 42.770451, 42.894821, 42.911443, 42.926926, 42.881538, 42.834718, 42.840705,
]

# pandas Series(PRICES).pct_change(), first 8 values
SIMPLE_RETURNS_HEAD = [_, -0.00563825, 0.00136085, -0.01223103, 0.01650997, 0.01127904, 0.00602275, 0.00709534]
# numpy log(s / s.shift(1)), first 8 values
LOG_RETURNS_HEAD = [_, -0.0056542, 0.00135993, -0.01230645, 0.01637517, 0.01121591, 0.00600469, 0.00707029]

SERIES = 1e-6  # tolerance for values rounded to 6 decimals


# --- values ---------------------------------------------------------------------------


def test_sma_matches_pandas_rolling_mean():
    """sma(window=5) equals pandas rolling(5).mean(), None for the first 4 values."""
    assert ta.sma(PRICES, 5) == pytest.approx(SMA5, abs=SERIES)


def test_sma_window_one_is_the_prices():
    """A window of 1 averages each price with itself."""
    assert ta.sma([1, 2, 3], 1) == [1.0, 2.0, 3.0]


def test_sma_window_equal_to_length_has_one_value():
    """With exactly `window` prices only the last value is defined."""
    assert ta.sma([1, 2, 3], 3) == [None, None, 2.0]


def test_ema_matches_sma_seeded_pandas_ewm():
    """ema(window=5) equals pandas ewm(span=5, adjust=False) seeded with the first SMA."""
    assert ta.ema(PRICES, 5) == pytest.approx(EMA5, abs=SERIES)


def test_ema_seed_is_the_first_window_average():
    """The first EMA value, at index window-1, is the SMA of the first window."""
    assert ta.ema([2, 4, 6, 8], 3)[:3] == [None, None, 4.0]


def test_rsi_default_period_matches_wilder():
    """rsi() uses period 14 and starts at index 14."""
    assert ta.rsi(PRICES) == pytest.approx(RSI14, abs=SERIES)


def test_rsi_period_5_matches_wilder():
    """rsi(period=5) starts at index 5."""
    assert ta.rsi(PRICES, 5) == pytest.approx(RSI5, abs=SERIES)


def test_rsi_minimum_prices_gives_one_value():
    """period+1 prices give exactly one RSI value, at the last index."""
    assert ta.rsi([1, 2, 1], 2) == [None, None, 50.0]


def test_rsi_without_losses_is_100():
    """Only gains gives RSI 100 (TA-Lib: avg_loss == 0)."""
    assert ta.rsi(list(range(20)), 14)[14:] == [100.0] * 6


def test_rsi_flat_prices_is_0():
    """No gains and no losses gives RSI 0, as TA-Lib does."""
    assert ta.rsi([5.0] * 20, 14)[14:] == [0.0] * 6


def test_macd_matches_reference():
    """macd(5, 10, 4) matches the pandas computation, all three series None before index 12."""
    result = ta.macd(PRICES, 5, 10, 4)
    assert result["macd"] == pytest.approx(MACD_5_10_4, abs=SERIES)
    assert result["signal"] == pytest.approx(SIGNAL_5_10_4, abs=SERIES)
    assert result["histogram"] == pytest.approx(HISTOGRAM_5_10_4, abs=SERIES)


def test_macd_defaults_match_talib():
    """macd() uses 12/26/9, is None before index 26+9-2 = 33 and matches talib.MACD after."""
    result = ta.macd(PRICES)
    assert set(result) == {"macd", "signal", "histogram"}
    for name, tail in (
        ("macd", MACD_DEFAULT_TAIL),
        ("signal", SIGNAL_DEFAULT_TAIL),
        ("histogram", HISTOGRAM_DEFAULT_TAIL),
    ):
        assert len(result[name]) == len(PRICES)
        assert result[name][:33] == [None] * 33
        assert result[name][33:] == pytest.approx(tail, abs=SERIES)


def test_bollinger_matches_pandas():
    """bollinger(10, 1.5) uses the SMA and 1.5 population standard deviations."""
    result = ta.bollinger(PRICES, 10, 1.5)
    assert result["upper"] == pytest.approx(BB_UPPER, abs=SERIES)
    assert result["middle"] == pytest.approx(BB_MIDDLE, abs=SERIES)
    assert result["lower"] == pytest.approx(BB_LOWER, abs=SERIES)


def test_bollinger_defaults():
    """bollinger() uses window 20 and k 2: 19 leading Nones and a band of width 2 std."""
    result = ta.bollinger(PRICES)
    assert result["middle"][:19] == [None] * 19
    assert result["middle"][19] == pytest.approx(sum(PRICES[:20]) / 20)
    spread = result["upper"][19] - result["middle"][19]
    assert spread == pytest.approx(result["middle"][19] - result["lower"][19])
    # numpy.std(PRICES[:20]) * 2
    assert spread == pytest.approx(2 * 0.8531641108251095, abs=1e-9)


def test_returns_simple():
    """Simple returns match pandas pct_change(), with None first."""
    result = ta.returns(PRICES)
    assert len(result) == len(PRICES)
    assert result[:8] == pytest.approx(SIMPLE_RETURNS_HEAD, abs=1e-8)


def test_returns_log():
    """Log returns match numpy log(p[t]/p[t-1]), with None first."""
    result = ta.returns(PRICES, "log")
    assert len(result) == len(PRICES)
    assert result[:8] == pytest.approx(LOG_RETURNS_HEAD, abs=1e-8)


def test_volatility_all_returns():
    """With no window it is numpy.std (ddof=0) of all 39 simple returns."""
    assert ta.volatility(PRICES) == pytest.approx(0.011871787685997136, abs=1e-12)


def test_volatility_window():
    """With window=10 it is numpy.std of the last 10 simple returns."""
    assert ta.volatility(PRICES, 10) == pytest.approx(0.015148391572230064, abs=1e-12)


def test_max_drawdown():
    """max((cummax - p) / cummax) from pandas: the 46.45 -> 42.66 fall."""
    assert ta.max_drawdown(PRICES) == pytest.approx(0.0815931108719054, abs=1e-12)
    assert ta.max_drawdown(PRICES) == pytest.approx((46.45 - 42.66) / 46.45)


def test_max_drawdown_never_falls_is_zero():
    """Prices that never fall have a drawdown of 0.0."""
    assert ta.max_drawdown([1, 2, 2, 3]) == 0.0


@pytest.mark.parametrize(
    ("confidence", "expected"),
    [
        # max(0, -numpy.percentile(simple returns, (1 - c) * 100)), default 'linear' method
        (0.95, 0.01833332007047853),
        (0.90, 0.012923766569674935),
        (0.99, 0.027851107940904892),
        (0.50, 0.0),
    ],
)
def test_var_matches_numpy_percentile(confidence, expected):
    """Historical VaR is minus numpy's linear (1 - c) percentile of simple returns, floored at 0."""
    assert ta.var(PRICES, confidence) == pytest.approx(expected, abs=1e-12)


def test_var_default_confidence_is_95():
    """var() uses confidence 0.95."""
    assert ta.var(PRICES) == ta.var(PRICES, 0.95)


def test_var_interpolates_between_returns():
    """Returns -0.1, 0, 0.1 at c=0.75: position 0.5 lies halfway between -0.1 and 0."""
    assert ta.var([100, 90, 90, 99], 0.75) == pytest.approx(0.05)


def test_integer_prices_give_floats():
    """Integer prices are accepted and give float results."""
    assert ta.sma([1, 2], 2) == [None, 1.5]
    assert isinstance(ta.max_drawdown([2, 1]), float)


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ta.sma(PRICES, 0), "sma: 'window' must be an integer >= 1, got 0"),
        (lambda: ta.sma(PRICES, 2.0), "sma: 'window' must be an integer >= 1, got 2.0"),
        (lambda: ta.sma(PRICES, True), "sma: 'window' must be an integer >= 1, got True"),
        (lambda: ta.sma(PRICES, "5"), "sma: 'window' must be an integer >= 1, got '5'"),
        (lambda: ta.sma([1, 2], 3), "sma: needs at least 3 prices for window 3, got 2"),
        (lambda: ta.ema(PRICES, -1), "ema: 'window' must be an integer >= 1, got -1"),
        (lambda: ta.ema([1], 2), "ema: needs at least 2 prices for window 2, got 1"),
        (lambda: ta.rsi([1, 2, 3]), "rsi: needs at least 15 prices for period 14, got 3"),
        (lambda: ta.rsi(PRICES, 0), "rsi: 'period' must be an integer >= 1, got 0"),
        (lambda: ta.macd(PRICES, 26, 12), "macd: 'fast' must be less than 'slow', got fast=26, slow=12"),
        (lambda: ta.macd(PRICES, 5, 5), "macd: 'fast' must be less than 'slow', got fast=5, slow=5"),
        (lambda: ta.macd(PRICES, signal=0), "macd: 'signal' must be an integer >= 1, got 0"),
        (lambda: ta.macd(PRICES[:33]), "macd: needs at least 34 prices for slow 26 and signal 9, got 33"),
        (lambda: ta.bollinger(PRICES, k=0), "bollinger: 'k' must be a number > 0, got 0"),
        (lambda: ta.bollinger(PRICES, k=-1.5), "bollinger: 'k' must be a number > 0, got -1.5"),
        (lambda: ta.bollinger(PRICES, k=True), "bollinger: 'k' must be a number > 0, got True"),
        (lambda: ta.bollinger(PRICES, k="2"), "bollinger: 'k' must be a number > 0, got '2'"),
        (lambda: ta.bollinger(PRICES, k=math.inf), "bollinger: 'k' must be a number > 0, got inf"),
        (lambda: ta.bollinger(PRICES[:19]), "bollinger: needs at least 20 prices for window 20, got 19"),
        (lambda: ta.returns(PRICES, "pct"), "returns: 'kind' must be 'simple' or 'log', got 'pct'"),
        (lambda: ta.returns([1]), "returns: needs at least 2 prices, got 1"),
        (lambda: ta.returns([1, 0, 2]), "returns: simple returns need non-zero prices; item 1 is 0"),
        (lambda: ta.returns([1, 0, 2], "log"), "returns: log returns need prices > 0; item 1 is 0.0"),
        (lambda: ta.returns([1, -2], "log"), "returns: log returns need prices > 0; item 1 is -2.0"),
        (lambda: ta.volatility([1]), "volatility: needs at least 2 prices, got 1"),
        (lambda: ta.volatility([1, 2, 3], 3), "volatility: needs at least 4 prices for window 3, got 3"),
        (lambda: ta.volatility(PRICES, 0), "volatility: 'window' must be an integer >= 1, got 0"),
        (lambda: ta.volatility([0, 1]), "volatility: simple returns need non-zero prices; item 0 is 0"),
        (lambda: ta.max_drawdown([5]), "max_drawdown: needs at least 2 prices, got 1"),
        (lambda: ta.max_drawdown([5, -1]), "max_drawdown: prices must be > 0; item 1 is -1.0"),
        (lambda: ta.var([1]), "var: needs at least 2 prices, got 1"),
        (lambda: ta.var(PRICES, 0), "var: 'confidence' must be a number strictly between 0 and 1, got 0"),
        (lambda: ta.var(PRICES, 1), "var: 'confidence' must be a number strictly between 0 and 1, got 1"),
        (lambda: ta.var(PRICES, 1.5), "var: 'confidence' must be a number strictly between 0 and 1, got 1.5"),
        (lambda: ta.var(PRICES, True), "var: 'confidence' must be a number strictly between 0 and 1, got True"),
        (lambda: ta.var(PRICES, math.nan), "var: 'confidence' must be a number strictly between 0 and 1, got nan"),
    ],
)
def test_bad_parameters_are_rejected(call, message):
    """Each bad parameter raises BadRequest saying exactly what is wrong."""
    with pytest.raises(BadRequest) as caught:
        call()
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("prices", "message"),
    [
        ([1, 2, "abc"], "sma: 'prices' must be a list of numbers; item 2 is 'abc'"),
        ([1, None, 3], "sma: 'prices' must be a list of numbers; item 1 is None"),
        ([True, 2, 3], "sma: 'prices' must be a list of numbers; item 0 is True"),
        ([1, [2], 3], "sma: 'prices' must be a list of numbers; item 1 is [2]"),
        ([1, 2, math.nan], "sma: 'prices' must contain only finite numbers; item 2 is nan"),
        ([1, -math.inf, 3], "sma: 'prices' must contain only finite numbers; item 1 is -inf"),
        ("1,2,3", "sma: 'prices' must be a list of numbers, got str"),
        ({"a": 1}, "sma: 'prices' must be a list of numbers, got dict"),
        (None, "sma: 'prices' must be a list of numbers, got NoneType"),
        ([], "sma: needs at least 1 price for window 1, got 0"),
    ],
)
def test_bad_prices_are_rejected(prices, message):
    """Non-lists, non-numbers, booleans, NaN/inf and too few prices raise BadRequest."""
    with pytest.raises(BadRequest) as caught:
        ta.sma(prices, 1)
    assert str(caught.value) == message


# --- the service ----------------------------------------------------------------------


def test_method_table_lists_every_method():
    """The dispatch table maps each method name to its module-level function."""
    assert ta.METHODS == {
        "bollinger": ta.bollinger,
        "ema": ta.ema,
        "macd": ta.macd,
        "max_drawdown": ta.max_drawdown,
        "returns": ta.returns,
        "rsi": ta.rsi,
        "sma": ta.sma,
        "var": ta.var,
        "volatility": ta.volatility,
    }


def test_start_accepts_empty_config():
    """start({}) succeeds and returns nothing."""
    assert ta.TA().start({}) is None


def test_handle_dispatches_with_named_params():
    """handle() calls the named method with the params as keyword arguments."""
    assert ta.TA().handle("sma", {"prices": PRICES, "window": 5}) == ta.sma(PRICES, 5)


def test_handle_applies_defaults():
    """Optional parameters may be left out of params."""
    assert ta.TA().handle("rsi", {"prices": PRICES}) == ta.rsi(PRICES)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("sma", {"window": 5}),
        ("ema", {"window": 5}),
        ("rsi", {}),
        ("macd", {"fast": 5, "slow": 10, "signal": 4}),
        ("bollinger", {"window": 10, "k": 1.5}),
        ("returns", {"kind": "log"}),
        ("volatility", {"window": 10}),
        ("max_drawdown", {}),
        ("var", {"confidence": 0.9}),
    ],
)
def test_handle_results_are_strict_json(method, params):
    """Every method's result serialises to JSON without NaN or infinity."""
    result = ta.TA().handle(method, {"prices": PRICES, **params})
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_handle_unknown_method():
    """An unknown method name lists the known ones."""
    with pytest.raises(BadRequest) as caught:
        ta.TA().handle("foo", {"prices": PRICES})
    assert str(caught.value) == (
        "unknown method 'foo'; known: bollinger, ema, macd, max_drawdown, returns, rsi, sma, var, volatility"
    )


def test_handle_does_not_reach_private_names():
    """Names outside the table, such as module internals, are unknown methods."""
    with pytest.raises(BadRequest, match="unknown method '_mean'"):
        ta.TA().handle("_mean", {"values": [1]})


@pytest.mark.parametrize("params", [[1, 2, 3], "prices", None, 5])
def test_handle_params_must_be_an_object(params):
    """params that are not a dict are rejected with their type."""
    with pytest.raises(BadRequest) as caught:
        ta.TA().handle("sma", params)
    assert str(caught.value) == f"sma: params must be an object, got {type(params).__name__}"


def test_handle_unknown_parameter():
    """A misspelt parameter name is reported by name."""
    with pytest.raises(BadRequest) as caught:
        ta.TA().handle("sma", {"prices": PRICES, "windw": 5})
    assert str(caught.value) == "sma: unknown parameter 'windw'"


@pytest.mark.parametrize(
    ("method", "params", "missing"),
    [
        ("sma", {"prices": PRICES}, "window"),
        ("ema", {"prices": PRICES}, "window"),
        ("rsi", {}, "prices"),
    ],
)
def test_handle_missing_required_parameter(method, params, missing):
    """A required parameter left out is reported by name."""
    with pytest.raises(BadRequest) as caught:
        ta.TA().handle(method, params)
    assert str(caught.value) == f"{method}: missing required parameter '{missing}'"


def test_handle_passes_on_value_errors():
    """Bad values reach the method's own checks through handle()."""
    with pytest.raises(BadRequest) as caught:
        ta.TA().handle("rsi", {"prices": [1, 2, 3]})
    assert str(caught.value) == "rsi: needs at least 15 prices for period 14, got 3"
