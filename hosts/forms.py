from django import forms

from .models import Host


class HostForm(forms.ModelForm):
    class Meta:
        model = Host
        fields = ["name", "uri", "peer_uri", "migration_address", "shared_prefixes", "enabled"]
        widgets = {"shared_prefixes": forms.Textarea(attrs={"rows": 3})}

    def clean(self):
        cleaned = super().clean()
        uri = cleaned.get("uri", "")
        if uri and Host.objects.exclude(pk=self.instance.pk).filter(uri=uri).exists():
            self.add_error("uri", "Another host already uses this URI; each host is registered once.")
        return cleaned


class LifecycleForm(forms.Form):
    action = forms.ChoiceField(
        choices=[("start", "Start"), ("shutdown", "Shut down"), ("reboot", "Reboot"), ("destroy", "Force off")]
    )
