"""The GPU segmentation service: backends behind one interface (:mod:`.base`), MONAI Label
(:mod:`.monailabel`), the local engine (:mod:`.local`), jobs and their store, results checked
and imported as coded segmentations (:mod:`.results`, :mod:`.runner`)."""
