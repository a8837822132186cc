"""kubetune's trainer image: data preparation, launch and training of one FineTuneJob."""
