"""Testing tools shipped with luxjax, so users test their own layers the way luxjax does."""

from ._check_layer import check_layer as check_layer
