"""The layer cache: step keys (:mod:`.keys`), where entries live (:mod:`.store`), one build's use (:mod:`.session`)."""
