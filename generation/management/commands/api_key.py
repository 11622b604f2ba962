from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from generation.api import auth
from generation.models import ApiKey


class Command(BaseCommand):
    help = "Create, list and revoke users' API keys (a new key is printed once)."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="Make a key for a user and print it.")
        create.add_argument("username")
        create.add_argument("--name", default="", help="also the title of its conversation (default: API)")
        listing = actions.add_parser("list", help="List keys (never the keys themselves).")
        listing.add_argument("username", nargs="?")
        revoke = actions.add_parser("revoke", help="Revoke a key by its id or its prefix.")
        revoke.add_argument("key", help="the id from `list`, or the key's first characters")

    def handle(self, *args, **options):
        getattr(self, f"_{options['action']}")(options)

    def _create(self, options):
        try:
            user = get_user_model().objects.get_by_natural_key(options["username"])
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user {options['username']!r}.") from None
        try:
            api_key, key = auth.api_key_create(owner=user, name=options["name"])
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stderr.write(f"Key {api_key.pk} ({api_key.name}) for {user}; it is shown only this once:")
        self.stdout.write(key)

    def _list(self, options):
        keys = ApiKey.objects.select_related("owner").order_by("owner__username", "created_at")
        if options["username"]:
            keys = keys.filter(owner__username=options["username"])
        for api_key in keys:
            state = f"revoked {api_key.revoked_at:%Y-%m-%d %H:%M}" if api_key.revoked_at else "active"
            used = f"{api_key.last_used_at:%Y-%m-%d %H:%M}" if api_key.last_used_at else "never"
            self.stdout.write(
                f"{api_key.pk}\t{api_key.owner}\t{api_key.name}\t{api_key.prefix}…\t"
                f"created {api_key.created_at:%Y-%m-%d %H:%M}\tlast used {used}\t{state}"
            )

    def _revoke(self, options):
        value = options["key"]
        if value.isdigit():
            keys = ApiKey.objects.filter(pk=int(value))
        elif len(value) > 20:
            keys = ApiKey.objects.filter(digest=auth.key_digest(value))  # the whole key
        else:
            keys = ApiKey.objects.filter(prefix__startswith=value)
        found = list(keys[:2])
        if not found:
            raise CommandError(f"No key {value!r}.")
        if len(found) > 1:
            raise CommandError(f"{value!r} matches several keys; use the id from `api_key list`.")
        auth.api_key_revoke(api_key=found[0])
        self.stdout.write(f"Revoked key {found[0].pk} ({found[0].name}) of {found[0].owner}.")
