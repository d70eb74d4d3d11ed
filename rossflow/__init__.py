"""rossflow: Rossum integration pipelines on Prefect."""

from rossflow._warnings import quiet_known_third_party_warnings

quiet_known_third_party_warnings()
