"""Sparsity methods (mask policies): one small class each, one yaml each in conf/method/."""

from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.methods.channel import ChannelPruning
from sparsebench.sparsity.methods.dass import SearchedMasks
from sparsebench.sparsity.methods.dst import SET, RigL
from sparsebench.sparsity.methods.gmp import GradualMagnitudePruning
from sparsebench.sparsity.methods.hesso import HESSO
from sparsebench.sparsity.methods.hesso_cric import HESSOCRIC
from sparsebench.sparsity.methods.imp import IterativeMagnitudePruning
from sparsebench.sparsity.methods.iss_p import ISSP
from sparsebench.sparsity.methods.magnitude import MagnitudePruning
from sparsebench.sparsity.methods.nm import BDWP, SRSTE, NMOneShot
from sparsebench.sparsity.methods.node import NodeMask
from sparsebench.sparsity.methods.pgf import ProgressiveGradientFlow
from sparsebench.sparsity.methods.soups import SparseModelSoups
from sparsebench.sparsity.methods.static import RandomPruning

__all__ = [
    "BDWP",
    "SET",
    "SRSTE",
    "SparseModelSoups",
    "ChannelPruning",
    "GradualMagnitudePruning",
    "HESSO",
    "HESSOCRIC",
    "ISSP",
    "IterativeMagnitudePruning",
    "MagnitudePruning",
    "NMOneShot",
    "NodeMask",
    "ProgressiveGradientFlow",
    "RandomPruning",
    "SearchedMasks",
    "RigL",
    "SparsityMethod",
]
