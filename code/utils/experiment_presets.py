"""The experiment presets of run_experiments.py: each a named list of runs (method script + flags).

A run is one training script at one label budget on one dataset split; run_experiments.py repeats it for
every seed. Read a preset as a table: method, script, label budgets, flags. The flags given here are those
that differ from the script's own defaults; --root_path, --seed, --gpu and --snapshot_dir are added by the
runner.
"""
from dataclasses import dataclass, field

# method -> training script (code/<script>.py) and the flags every preset uses for it
METHODS = {
    "supervised": ("train_fully_supervised_ACDC", []),
    "fixmatch": ("train_fixmatch_ACDC", []),
    "meanteacher": ("train_mean_teacher_ACDC", []),
    "uamt": ("train_uamt_ACDC", []),
    "cps": ("train_cps_ACDC", []),
    "ict": ("train_ict_ACDC", []),
    "mcnetv2": ("train_mcnetv2_ACDC", ["--model", "mcnet"]),
    "incl": ("train_incl_ACDC", []),
    "diffrect": ("train_diffrect_ACDC", []),
    # the methods compared with since (BCP and ABD pre-train for --pretrain_iterations, a quarter of the run by
    # default, inside --max_iterations)
    "bcp": ("train_bcp_ACDC", []),
    "abd": ("train_abd_ACDC", []),
    "unimatch": ("train_unimatch_ACDC", []),
    # controls: FixMatch's batches (unlabeled slices pass through BatchNorm) without its unlabeled loss, and the
    # supervised script with every training label (the upper bound under the same budget)
    "supervised-lambda0": ("train_fixmatch_ACDC", ["--consistency", "0"]),
    "supervised-full": ("train_fully_supervised_ACDC", []),
    # a check of UniMatch's collapse at the CPU budget: its unlabeled Dice without the classes that have no
    # confident pixel in the batch
    "unimatch-skip_absent": ("train_unimatch_ACDC", ["--absent_classes", "skip"]),
}
BASELINES = ["supervised", "fixmatch", "uamt", "cps", "ict", "mcnetv2", "incl"]
RECENT = ["bcp", "abd", "unimatch"]  # their own schedules and no ramp: no semi-supervised flags from a preset
CONTROLS = ["supervised-lambda0", "supervised-full"]
FULL_LABELS = {"ACDC": 140}  # --labelnum of supervised-full: every training slice (ACDC's table: 140 -> 1312)


@dataclass(frozen=True)
class Run:
    method: str            # row name in the tables, e.g. "diffrect" or "diffrect-no_scs"
    script: str            # module in code/, e.g. "train_diffrect_ACDC"
    labelnum: int
    flags: tuple = ()
    split: str = ""        # dataset split folder under --root_path ("split1"), "" for the folder itself

    @property
    def name(self):
        """The run folder's name (without the seed): <method>[-<split>]_<labelnum>."""
        return f"{self.method}{'-' + self.split if self.split else ''}_{self.labelnum}"

    @property
    def model(self):
        f = list(self.flags)
        return f[f.index("--model") + 1] if "--model" in f else "unet"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    root: str                       # default --root_path, relative to the project root
    runs: tuple
    seeds: tuple = (1337, 2, 3)
    synthetic: bool = False         # generate a small synthetic dataset at root when it is missing
    against: str = "diffrect"       # the method the significance tests compare with
    extra: dict = field(default_factory=dict)


def _runs(methods, labelnums, common=(), per_method=None, splits=("",), semi=(), dataset="ACDC"):
    """Every method at every label budget and split; `semi`: flags of the semi-supervised methods only. A variant
    "<method>-<name>" runs <method>'s script with its own flags; supervised-full runs once, at every label."""
    per_method = per_method or {}
    out = []
    for split in splits:
        for m in methods:
            base = m if m in METHODS else m.split("-", 1)[0]
            script, flags = METHODS[base]
            own = tuple(per_method.get(m, ()))
            # a method's own flags replace the semi-supervised ones they name (no flag given twice)
            semi_m = () if script == METHODS["supervised"][0] or (semi and semi[0] in own) else semi
            flags = (*flags, *common, *semi_m, *own)
            for labelnum in ((FULL_LABELS[dataset],) if m == "supervised-full" else labelnums):
                out.append(Run(m, script, labelnum, flags, split))
    return tuple(out)


def _replace(flags, name, value):
    """flags with the value of a one-value flag replaced."""
    i = flags.index(name)
    return (*flags[:i + 1], value, *flags[i + 2:])


# the paper's training setting: 256², 30 000 iterations; DiffRect's own batch of 6 (3 labeled), the SSL4MIS
# batch of 24 (12) for the others (the scripts' defaults)
_PAPER = ("--patch_size", "256", "256", "--max_iterations", "30000")
_DIFFRECT_BATCH = ("--batch_size", "6", "--labeled_bs", "3")
# the CPU protocol: 5 % of ACDC, 128², batch 8 (4 labeled), 1200 iterations, the ramp scaled to the budget
_CPU = ("--patch_size", "128", "128", "--batch_size", "8", "--labeled_bs", "4", "--max_iterations", "1200",
        "--val_interval", "200", "--gpu", "-1")

PRESETS = {p.name: p for p in [
    Preset("paper-acdc", "the paper's ACDC table: every method but Mean Teacher at 1 / 3 / 7 labeled patients "
           "(1 / 5 / 10 %), the controls supervised-lambda0 (at each budget) and supervised-full (all 70 patients); "
           "BCP and ABD at their papers' 10 000 pre-training + 30 000 self-training iterations, UniMatch at 30 000 (its 300 epochs "
           "over the unlabeled slices, 12 + 12 per step)",
           "data/ACDC", _runs(BASELINES + CONTROLS + ["diffrect"], (1, 3, 7), _PAPER, {"diffrect": _DIFFRECT_BATCH})
           + _runs(["bcp", "abd"], (1, 3, 7), _replace(_PAPER, "--max_iterations", "40000"))
           + _runs(["unimatch"], (1, 3, 7), _PAPER)),
    # (MS-CMRSEG19 and Prostate have no all-labels entry in their tables, so no supervised-full there)
    Preset("paper-mscmr", "MS-CMRSEG19 LGE, 7 labeled patients (20 %), both splits averaged; control "
           "supervised-lambda0",
           "data/MSCMR", _runs(BASELINES + ["supervised-lambda0", "diffrect"], (7,), _PAPER,
                               {"diffrect": _DIFFRECT_BATCH}, ("split1", "split2"))),
    Preset("paper-prostate", "MSD Task05 Prostate (T2), 2 labeled patients (10 %), both splits averaged; control "
           "supervised-lambda0",
           "data/Prostate", _runs(BASELINES + ["supervised-lambda0", "diffrect"], (2,), _PAPER,
                                  {"diffrect": _DIFFRECT_BATCH}, ("split1", "split2"))),
    Preset("paper-ablation", "the ablation tables on ACDC 5 %: components (SCS, CG, S2W, W2G, LFR), guidance "
           "variants, diffusion steps; the FixMatch row at DiffRect's batch 6 (3)",
           "data/ACDC", _runs(["fixmatch", "diffrect-no_scs", "diffrect-no_cg", "diffrect-lcc_only",
                               "diffrect-no_s2w", "diffrect-no_w2g", "diffrect", "diffrect-cg_jaccard",
                               "diffrect-cg_fixed", "diffrect-cg_random", "diffrect-cg_both", "diffrect-ts5",
                               "diffrect-ts20", "diffrect-ts_sample5"], (3,), _PAPER + _DIFFRECT_BATCH,
                              {"diffrect-no_scs": ["--no_scs"], "diffrect-no_cg": ["--cg", "none"],
                               "diffrect-lcc_only": ["--no_lfr"], "diffrect-no_s2w": ["--no_s2w"],
                               "diffrect-no_w2g": ["--no_w2g"], "diffrect-cg_jaccard": ["--cg", "jaccard"],
                               "diffrect-cg_fixed": ["--cg", "fixed"], "diffrect-cg_random": ["--cg", "random"],
                               "diffrect-cg_both": ["--cg", "both"], "diffrect-ts5": ["--ts", "5"],
                               "diffrect-ts20": ["--ts", "20"], "diffrect-ts_sample5": ["--ts_sample", "5"]})),
    Preset("cpu-acdc", "the CPU protocol: every method on ACDC 5 % at 128², batch 8 (4), 1200 iterations, "
           "consistency ramp 8, DiffRect's rectification from iteration 400; DiffRect also at the authors' ramp 200; "
           "controls supervised-lambda0 (FixMatch's batches, no unlabeled loss) and supervised-full (all labels); "
           "BCP, ABD and UniMatch in the same 1200 iterations, BCP's and ABD's pre-training included (300 + 900, "
           "their papers' 1 : 3), so the comparison is one of methods, not of budgets; UniMatch also without the "
           "classes absent from its confident pseudo labels (unimatch-skip_absent)",
           "data/ACDC", _runs(BASELINES + CONTROLS + ["meanteacher", "diffrect", "diffrect-ramp200"], (3,), _CPU,
                              {"diffrect": ["--refine_start", "400"],
                               "diffrect-ramp200": ["--refine_start", "400", "--consistency_rampup", "200"]},
                              semi=("--consistency_rampup", "8")) + _runs(RECENT, (3,), _CPU)
           + _runs(["unimatch-skip_absent"], (3,), _CPU)),
    Preset("cpu-acdc-long", "does the CPU protocol's ranking survive a longer budget: FixMatch and DiffRect at "
           "3600 iterations (3x), the ramp (24) and DiffRect's rectification start (1200) scaled with it",
           "data/ACDC", _runs(["fixmatch", "diffrect"], (3,), _replace(_CPU, "--max_iterations", "3600"),
                              {"diffrect": ["--refine_start", "1200"]}, semi=("--consistency_rampup", "24")),
           seeds=(1337,)),
    Preset("smoke", "seconds: supervised, FixMatch and DiffRect on a tiny synthetic dataset (tests, a first look)",
           "data/synthetic_smoke", _runs(["supervised", "fixmatch", "diffrect"], (3,),
                                         ("--patch_size", "32", "32", "--batch_size", "4", "--labeled_bs", "2",
                                          "--max_iterations", "6", "--val_interval", "3", "--log_interval", "2"),
                                         {"diffrect": ["--refine_start", "3", "--base_chn_rf", "8"]},
                                         semi=("--consistency_rampup", "1")),
           seeds=(1337, 2), synthetic=True),
]}
