"""A MONAI Label app for SlicerVSP's service tests: one infer task that needs no weights.

``threshold_organs`` labels intensity bands of the image (value ranges below), so a test volume
with boxes of known intensities gets known labels at known places, and the sample CT gets
several labels. Request params for fault tests: ``sleep_s`` (answer late), ``fail`` (raise, the
server answers 500). Every infer appends a line to the file named by $VSP_TEST_INFER_LOG, so a
test can count submits.
"""

import logging
import os
import time

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirstd, EnsureTyped, LoadImaged
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

logger = logging.getLogger(__name__)

#: label name -> (value, low, high): voxels with low <= intensity < high get the value.
BANDS = {
    "kidney_left": (1, 900.0, 1100.0),
    "kidney_right": (2, 1900.0, 2100.0),
    "tumor": (3, 2900.0, 3100.0),
    "aorta": (4, 3900.0, 4100.0),
}
#: The sample CT (HU): contrast-filled arteries and kidney cortex.
SAMPLE_BANDS = {"aorta": (4, 240.0, 420.0), "kidney_left": (1, 160.0, 240.0)}


class _Tiny(torch.nn.Module):
    """A network is required for the model to be listed in /info/; it is never trained."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


class ThresholdOrgans(BasicInferTask):
    def __init__(self):
        super().__init__(
            path=None,
            network=_Tiny(),
            type=InferType.SEGMENTATION,
            labels={name: value for name, (value, _, _) in BANDS.items()},
            dimension=3,
            description="Intensity bands as organs (test app, no weights)",
        )

    def pre_transforms(self, data=None):
        return [
            LoadImaged(keys="image", reader="ITKReader"),
            EnsureTyped(keys="image"),
            EnsureChannelFirstd(keys="image"),
        ]

    def inferer(self, data=None):
        raise NotImplementedError  # run_inferer below does the work

    def run_inferer(self, data, convert_to_batch=True, device="cpu"):
        log_file = os.environ.get("VSP_TEST_INFER_LOG")
        if log_file:
            with open(log_file, "a") as stream:
                stream.write(f"infer {time.time()}\n")
        if data.get("fail"):
            raise RuntimeError("test app: failure requested")
        if data.get("sleep_s"):
            time.sleep(float(data["sleep_s"]))
        image = data["image"]
        voxels = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        voxels = voxels[0]
        label = np.zeros(voxels.shape, np.uint8)
        bands = SAMPLE_BANDS if data.get("bands") == "sample" else BANDS
        for _name, (value, low, high) in bands.items():
            label[(voxels >= low) & (voxels < high)] = value
        # (i, j, k) without a channel, carrying the image's affine: the writer takes the result's
        # geometry from it (stock apps do this with the Restored transform).
        data["pred"] = MetaTensor(torch.as_tensor(label), affine=image.affine)
        return data

    def inverse_transforms(self, data=None):
        return []

    def post_transforms(self, data=None):
        return [EnsureTyped(keys="pred", device="cpu")]


class MyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        super().__init__(
            app_dir=app_dir, studies=studies, conf=conf, name="SlicerVSP test app", version="0.1.0",
            description="Thresholds as organs, for SlicerVSP's service tests",
        )  # fmt: skip

    def init_infers(self):
        return {"threshold_organs": ThresholdOrgans()}
