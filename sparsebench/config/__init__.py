"""The config floor: schemas (:mod:`.schemas`, :mod:`.commands`, :mod:`.targets`), the one way
to compose a run (:mod:`.compose`), its checks (:mod:`.checks`) and where the shipped configs
are (:mod:`.resources`)."""
