"""The accuracy proxy: everything that runs data through the model."""
