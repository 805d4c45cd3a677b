"""The local web dashboard (`charwise serve`): an optional extra, imported only when used."""
