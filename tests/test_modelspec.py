from supersizeme.modelspec import RDNParams


def test_name_follows_isr():
    assert RDNParams(C=3, D=10, G=64, G0=64).name == "rdn-C3-D10-G64-G064-x2"


def test_receptive_radius_grows_with_depth():
    small, deep = RDNParams(3, 6, 32, 32), RDNParams(3, 10, 64, 64)
    assert deep.receptive_radius - small.receptive_radius == 3 * 4
    assert RDNParams(3, 10, 64, 64).receptive_radius == 38


def test_json_round_trip_ignores_unknown_keys():
    params = RDNParams(2, 3, 16, 8)
    assert RDNParams.from_json({**params.to_json(), "weights_sha256": "x"}) == params
