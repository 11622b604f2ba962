"""Keep the embedded channel layer's tables, and only those, in their own SQLite file."""

from channels_lite.router import ChannelsRouter


class ChannelLayerRouter(ChannelsRouter):
    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if app_label in self.route_app_labels:
            return db == self.database
        # Nothing of ours belongs in the channel layer's database.
        return db != self.database
