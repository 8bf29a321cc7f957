"""Config-argument validation: bad values fail at parse time and name the argument."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import budget_scan  # noqa: E402
import common  # noqa: E402
import quickstart  # noqa: E402


def test_typed_getters_name_the_argument():
    a = common.parse_arg("budget=12,lr=0.5", ("budget", "lr", "epochs"))
    assert a.int("budget", 1) == 12 and a.float("lr", 1.0) == 0.5 and a.int("epochs", 7) == 7
    with pytest.raises(ValueError, match=r"config argument budget='abc' is not a valid int"):
        common.parse_arg("budget=abc", ("budget",)).int("budget", 1)
    with pytest.raises(ValueError, match=r"config argument budget='0' must be >= 1"):
        common.parse_arg("budget=0", ("budget",)).int("budget", 1, minimum=1)


@pytest.mark.parametrize("arg, message", [
    ("budget=abc", "budget='abc' is not a valid int"),
    ("epochs=0", "epochs='0' must be >= 1"),
    ("victim=bogus", "victim='bogus'; allowed: 'shipped'"),
    ("api_output=logits", "api_output='logits'; allowed: 'representation' or 'projection'"),
    ("views=0", "views='0' must be >= 1"),
])
def test_quickstart_rejects_bad_values(arg, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        quickstart.get_config(arg)


def test_budget_scan_losses_accept_plus_lists():
    assert budget_scan.get_config("losses=mse+infonce").losses == "mse,infonce"
    assert quickstart.get_config("").steal.model.dtype == "float32"
