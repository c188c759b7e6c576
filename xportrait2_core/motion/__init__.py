"""A performance as an asset of its own: the motion of a take saved once (:mod:`.file`), reused on
any portrait, and edited in time (:mod:`.edits`)."""
