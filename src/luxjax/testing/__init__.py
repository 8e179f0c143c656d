"""Testing tools shipped with luxjax, so users test their own layers the way luxjax does."""

from ._check_layer import check_layer as check_layer
from ._check_precision import check_precision as check_precision
